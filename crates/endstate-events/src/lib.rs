//! The timeline's vocabulary: every event kind is one variant of [`Event`], with a typed payload.
//!
//! The store keeps an event's kind and payload as it was written (`kind`, `data`); the server writes
//! them only through [`Event::kind`] and [`Event::data`], and reads them back only through
//! [`Body::parse`]. A kind this build does not know (written by a newer server, or a peer's), or a
//! payload that does not fit its kind, is [`Body::Unknown`]: kept verbatim, shown as it came, never
//! refused. Payloads tolerate fields they do not know, so a newer writer may add some.
//!
//! `tests/golden/` holds one JSON file per kind: a diff there is a change of the record, to review
//! as one (`UPDATE_GOLDEN=1 cargo test -p endstate-events` rewrites them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

macro_rules! events {
    ($( $(#[$doc:meta])* $kind:literal => $variant:ident($payload:ty), )*) => {
        /// What happened, by kind, with its details.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Event {
            $( $(#[$doc])* $variant($payload), )*
        }

        /// Every kind this build knows, in declaration order.
        pub const KINDS: &[&str] = &[$($kind),*];

        impl Event {
            /// The kind, as stored and queried (`change.rolling`).
            pub fn kind(&self) -> &'static str {
                match self {
                    $( Event::$variant(_) => $kind, )*
                }
            }

            /// The payload, as stored.
            pub fn data(&self) -> Value {
                let value = match self {
                    $( Event::$variant(payload) => serde_json::to_value(payload), )*
                };
                // Serializing these plain structs cannot fail (no maps with non-text keys).
                value.unwrap_or(Value::Null)
            }

            /// The event of a known kind whose payload fits it.
            pub fn parse(kind: &str, data: &Value) -> Result<Event, String> {
                match kind {
                    $( $kind => <$payload>::deserialize(data)
                        .map(Event::$variant)
                        .map_err(|error| format!("{kind}: {error}")), )*
                    other => Err(format!("unknown event kind {other:?}")),
                }
            }
        }
    };
}

events! {
    /// A revision of the desired state was submitted.
    "revision.submitted" => RevisionSubmitted(RevisionSubmitted),
    /// The server proposed a change that moves instances under the revision in force.
    "change.proposed" => ChangeProposed(ChangeProposed),
    /// A change waits for an earlier one to end.
    "change.queued" => ChangeQueued(ChangeTransition),
    /// A change was planned.
    "change.planning" => ChangePlanning(ChangeTransition),
    /// A change rolls out, from its first wave.
    "change.rolling" => ChangeRolling(ChangeTransition),
    /// A change waits (for health, a gate, a freeze, a pause).
    "change.waiting" => ChangeWaiting(ChangeTransition),
    /// A wave was released.
    "change.wave_started" => ChangeWaveStarted(ChangeTransition),
    /// The waves still to come were planned again on the hosts in service.
    "change.replanned" => ChangeReplanned(ChangeTransition),
    /// A person paused a change.
    "change.paused" => ChangePaused(ChangeTransition),
    /// A person resumed a change.
    "change.resumed" => ChangeResumed(ChangeTransition),
    /// A person accepted a proposed change.
    "change.accepted" => ChangeAccepted(ChangeTransition),
    /// A change halted: a person decides.
    "change.halted" => ChangeHalted(ChangeTransition),
    /// A change goes back to the revision in force.
    "change.rolling_back" => ChangeRollingBack(ChangeTransition),
    /// A change went back to the revision in force.
    "change.rolled_back" => ChangeRolledBack(ChangeTransition),
    /// A change reached its end state.
    "change.converged" => ChangeConverged(ChangeTransition),
    /// A change failed before it rolled (unreadable, unsatisfiable).
    "change.failed" => ChangeFailed(ChangeTransition),
    /// A person aborted a change before it rolled.
    "change.aborted" => ChangeAborted(ChangeTransition),
    /// A newer change replaced one that had not rolled.
    "change.superseded" => ChangeSuperseded(ChangeTransition),
    /// The Decider let a wave go (or a change end).
    "decision.allow" => DecisionAllow(Decision),
    /// The Decider made a change wait.
    "decision.wait" => DecisionWait(Decision),
    /// The Decider halted a change (or held it after its targeted hosts).
    "decision.halt" => DecisionHalt(Decision),
    /// The Decider rolled a change back.
    "decision.rollback" => DecisionRollback(Decision),
    /// An instance's observed state or status changed.
    "instance.transitioned" => InstanceTransitioned(InstanceTransitioned),
    /// Instances of the desired state could not be rendered for their hosts.
    "instance.unassignable" => InstanceUnassignable(Problems),
    /// An instance's previous run, as its agent last saw it.
    "instance.previous_run" => InstancePreviousRun(InstancePreviousRun),
    /// An instance exited, failed to start or was killed: the agent's detail.
    "instance.detail" => InstanceDetail(InstanceDetail),
    /// An instance's health probe failed.
    "instance.health" => InstanceHealth(InstanceHealth),
    /// A host's agent stopped answering.
    "host.unreachable" => HostUnreachable(HostUnreachable),
    /// A host's agent is connected again.
    "host.reachable" => HostReachable(HostReachable),
    /// A host's facts changed.
    "host.facts_changed" => HostFactsChanged(HostFactsChanged),
    /// A host left the hosts in service by a change.
    "host.retired" => HostRetired(HostRetired),
    /// A join token was made.
    "join_token.created" => JoinTokenCreated(JoinTokenCreated),
    /// A host enrolled.
    "agent.enrolled" => AgentEnrolled(AgentEnrolled),
    /// An enrolment was refused.
    "agent.enrol_refused" => AgentEnrolRefused(PeerRefused),
    /// A host was revoked.
    "agent.revoked" => AgentRevoked(Empty),
    /// Observations of an agent never arrived.
    "agent.observations_lost" => AgentObservationsLost(ObservationsLost),
    /// An agent renewed its certificate.
    "agent.renewed" => AgentRenewed(AgentRenewed),
    /// An agent sent a frame the server refused.
    "agent.protocol_error" => AgentProtocolError(Reason),
    /// An agent's connection was refused.
    "agent.refused" => AgentRefused(PeerRefused),
    /// A person asked for a run of an action.
    "action.requested" => ActionRequested(ActionRequested),
    /// A person asked for an action that is escalate only.
    "action.escalated" => ActionEscalated(ActionEscalated),
    /// A run was approved.
    "action.approved" => ActionApproved(ActionApproved),
    /// A run started.
    "action.started" => ActionStarted(ActionStarted),
    /// A run was cancelled.
    "action.cancelled" => ActionCancelled(ActionCancelled),
    /// A run lost a host.
    "action.host_lost" => ActionHostLost(ActionHostLost),
    /// A run ended.
    "action.finished" => ActionFinished(ActionFinished),
    /// A run ended on one host.
    "action.host_finished" => ActionHostFinished(ActionHostResult),
    /// An agent refused to run an action.
    "action.refused" => ActionRefused(ActionHostResult),
    /// A check's status changed.
    "check.status" => CheckStatus(CheckStatus),
    /// An alert opened.
    "alert.opened" => AlertOpened(Alert),
    /// An open alert's status (or flapping) changed.
    "alert.changed" => AlertChanged(Alert),
    /// An alert resolved.
    "alert.resolved" => AlertResolved(Alert),
    /// An alert's notification was held back (silenced, a consequence, flapping).
    "alert.suppressed" => AlertSuppressed(Alert),
    /// A person acknowledged an alert.
    "alert.acknowledged" => AlertAcknowledged(Alert),
    /// A person added a note to an alert.
    "alert.annotated" => AlertAnnotated(Alert),
    /// A notification was queued for delivery.
    "alert.delivery_queued" => AlertDeliveryQueued(Delivery),
    /// A notification was delivered.
    "alert.notified" => AlertNotified(Notified),
    /// A notification could not be delivered.
    "alert.notify_failed" => AlertNotifyFailed(Notified),
    /// A ticket was opened for an alert.
    "alert.ticket" => AlertTicket(Ticket),
    /// A ticket could not be opened.
    "alert.ticket_failed" => AlertTicketFailed(TicketFailed),
    /// A handler ran for an alert.
    "alert.handled" => AlertHandled(Handled),
    /// A handler failed.
    "alert.handler_failed" => AlertHandlerFailed(Handled),
    /// A silence was made.
    "silence.created" => SilenceCreated(Silence),
    /// A person removed a silence.
    "silence.removed" => SilenceRemoved(SilenceId),
    /// A silence ended.
    "silence.expired" => SilenceExpired(SilenceId),
    /// An API token was made.
    "token.created" => TokenCreated(TokenCreated),
    /// An API token was revoked.
    "token.revoked" => TokenRevoked(TokenRevoked),
    /// The admin token was replaced offline.
    "token.admin_reset" => TokenAdminReset(AdminReset),
    /// A person added a note to a system.
    "note.added" => NoteAdded(NoteAdded),
    /// Retention deleted old events.
    "timeline.compacted" => TimelineCompacted(Compacted),
    /// A Git source was added: the server follows its branch.
    "source.added" => SourceAdded(SourceDefinition),
    /// A Git source was removed: its systems stay as they are, owned by no source.
    "source.removed" => SourceRemoved(SourceRemoved),
    /// A new commit of a source's branch was handled: applied as a revision, or not, and why.
    "source.commit" => SourceCommit(SourceCommitSeen),
    /// A source's repository could not be fetched or read (said once per new reason).
    "source.failed" => SourceFailed(SourceFailed),
    /// A source's repository is fetched again after a failure.
    "source.recovered" => SourceRecovered(SourceRemoved),
}

/// What the store holds for an event: a known kind, typed, or anything else, verbatim.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// A kind this build knows, with a payload that fits it.
    Known(Box<Event>),
    /// A kind this build does not know, or a payload that does not fit: kept as it came.
    Unknown {
        /// The kind.
        kind: String,
        /// The payload.
        data: Value,
        /// Why it is not [`Body::Known`].
        why: String,
    },
}

impl Body {
    /// Reads a stored kind and payload; never fails.
    pub fn parse(kind: &str, data: &Value) -> Body {
        match Event::parse(kind, data) {
            Ok(event) => Body::Known(Box::new(event)),
            Err(why) => Body::Unknown {
                kind: kind.to_owned(),
                data: data.clone(),
                why,
            },
        }
    }

    /// The kind, as stored.
    pub fn kind(&self) -> &str {
        match self {
            Body::Known(event) => event.kind(),
            Body::Unknown { kind, .. } => kind,
        }
    }

    /// The payload, as it is stored (an unknown one verbatim).
    pub fn data(&self) -> Value {
        match self {
            Body::Known(event) => event.data(),
            Body::Unknown { data, .. } => data.clone(),
        }
    }

    /// The known event, if it is one.
    pub fn known(self) -> Option<Event> {
        match self {
            Body::Known(event) => Some(*event),
            Body::Unknown { .. } => None,
        }
    }
}

/// `{"kind": …, "data": …}`: how an event's body is exchanged whole (golden files, peers).
impl Serialize for Body {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Raw<'a> {
            kind: &'a str,
            data: Value,
        }
        Raw {
            kind: self.kind(),
            data: self.data(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Body, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            kind: String,
            #[serde(default)]
            data: Value,
        }
        let raw = Raw::deserialize(deserializer)?;
        Ok(Body::parse(&raw.kind, &raw.data))
    }
}

// === payloads ===

/// Counts of a plan's summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCounts {
    /// Objects added.
    pub add: u32,
    /// Objects changed.
    pub change: u32,
    /// Objects removed.
    pub remove: u32,
    /// Instances started.
    pub start: u32,
    /// Instances upgraded.
    pub upgrade: u32,
    /// Instances reconfigured.
    pub reconfigure: u32,
    /// Instances stopped.
    pub stop: u32,
}

/// `revision.submitted`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSubmitted {
    /// The author's message (may be empty).
    pub message: String,
    /// Where it came from: `cli`, `api`, `rollback:3`, `scale:7`, `git:…`.
    pub source: String,
    /// `sha256:…` of its documents.
    pub digest: String,
    /// What its plan changes, counted.
    pub summary: PlanCounts,
    /// The declared objects it changes (`add component shop/web`).
    pub objects: Vec<String>,
}

/// `change.proposed`: a rebalance the server proposes under the revision in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeProposed {
    /// The revision in force it places anew.
    pub revision: u64,
    /// `rolling` (it started by itself) or `halted` (it waits for a person).
    pub to: String,
    /// Hosts that joined since the revision was placed.
    pub joined: Vec<String>,
    /// Hosts gone since (revoked, retired, unreachable too long).
    pub gone: Vec<String>,
    /// Instance steps.
    pub steps: u64,
    /// Waves.
    pub waves: u32,
    /// Why, in one line.
    pub reason: String,
}

/// Every `change.*` transition but `change.proposed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeTransition {
    /// The state before (`pending`, `planning`, `rolling`, `halted`, `converged`, `rolled_back`,
    /// `failed`, `superseded`).
    pub from: String,
    /// The state after.
    pub to: String,
    /// Why.
    pub reason: String,
    /// The change's revision.
    pub revision: u64,
    /// The wave this transition moves to (index from 0, count), when it moves one.
    #[serde(default)]
    pub wave: Option<(u32, u32)>,
}

/// One rule the Decider looked at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule (`health`, `min_healthy_time`, `gate:error-rate`, `freeze`, …).
    pub rule: String,
    /// Whether it lets the rollout go on.
    pub ok: bool,
    /// What it found.
    pub message: String,
}

/// Every `decision.*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// `allow`, `wait`, `halt` or `rollback` (`allow` under `decision.halt`: a hold after the
    /// targeted hosts).
    pub verdict: String,
    /// Every rule looked at, the deciding ones first.
    pub findings: Vec<Finding>,
    /// When to look again.
    #[serde(default)]
    pub recheck_at_ms: Option<i64>,
    /// Everything the Decider was given, as endstate-decide records it (to replay the decision);
    /// its shape belongs to that crate's version.
    #[serde(default)]
    pub input: Value,
}

/// `instance.transitioned`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceTransitioned {
    /// The instance's slot on its host.
    pub slot: u32,
    /// The version it runs.
    #[serde(default)]
    pub version: Option<String>,
    /// Its status (`healthy`, `pending`, `unknown`, `degraded`, `unhealthy`).
    pub status: String,
    /// Its state, as the agent says (`running`, `exited`, …; `unknown` when the host is unreachable).
    pub state: String,
    /// The state before (absent: never observed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<String>,
    /// The status before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<String>,
    /// `false` for an instance the desired state does not (or no longer) have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<bool>,
}

/// A list of problems (`instance.unassignable`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problems {
    /// Each problem, naming what and where.
    pub problems: Vec<String>,
}

/// `instance.previous_run`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePreviousRun {
    /// `system/component#slot`.
    pub instance: String,
    /// Its state.
    pub state: String,
    /// The version it ran.
    pub version: String,
    /// The generation it ran at.
    pub generation: u64,
    /// When the server received it.
    pub received_ms: i64,
}

/// `instance.detail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDetail {
    /// `system/component#slot`.
    pub instance: String,
    /// Its state.
    pub state: String,
    /// Its exit code.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Restarts so far.
    pub restarts: u32,
    /// The agent's words.
    pub detail: String,
    /// When the server received it.
    pub received_ms: i64,
}

/// `instance.health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceHealth {
    /// `system/component#slot`.
    pub instance: String,
    /// Whether the probe passed.
    pub healthy: bool,
    /// What the probe said.
    pub detail: String,
}

/// `host.unreachable`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostUnreachable {
    /// Why (`no keepalive for 30000 ms`, `connection closed`).
    pub reason: String,
    /// How many instances it has, now unknown.
    pub instances: u64,
}

/// `host.reachable`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReachable {
    /// `ip:port` of the agent.
    pub peer: String,
    /// The agent's version.
    pub agent_version: String,
}

/// One field that changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The field's path.
    pub path: String,
    /// Before (absent: added).
    #[serde(default)]
    pub before: Option<Value>,
    /// After (absent: removed).
    #[serde(default)]
    pub after: Option<Value>,
}

/// `host.facts_changed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostFactsChanged {
    /// The facts that changed.
    pub changes: Vec<FieldChange>,
}

/// `host.retired`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRetired {
    /// The change that retired it.
    pub change: u64,
}

/// `join_token.created`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenCreated {
    /// Labels the enrolled host gets.
    pub labels: BTreeMap<String, String>,
    /// The only host it enrols, if bound to one.
    #[serde(default)]
    pub host: Option<String>,
    /// When it expires (RFC 3339).
    pub expires: String,
}

/// `agent.enrolled`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEnrolled {
    /// `ip:port` it enrolled from.
    pub peer: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its certificate's serial (hex).
    pub serial: String,
    /// Who made the join token.
    pub token_by: String,
}

/// A refused enrolment or connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRefused {
    /// `ip:port` it came from.
    pub peer: String,
    /// Why.
    pub reason: String,
}

/// No details.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `agent.observations_lost`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservationsLost {
    /// The first missing sequence number.
    pub from: u64,
    /// The last.
    pub to: u64,
}

/// `agent.renewed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRenewed {
    /// The new certificate's serial.
    pub serial: String,
    /// Until when it is valid (RFC 3339).
    pub not_after: String,
}

/// Just a reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// `action.requested`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequested {
    /// `run-N`.
    pub run: String,
    /// The action's name in its system.
    pub action: String,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
    /// Why, as the requester said.
    #[serde(default)]
    pub reason: Option<String>,
    /// The hosts it runs on.
    pub hosts: Vec<String>,
    /// `direct` or `approval`.
    pub engagement: String,
    /// Hosts at a time.
    pub concurrency: u64,
    /// Per host.
    pub timeout_ms: i64,
    /// Whether it may run twice at once.
    pub reentrant: bool,
}

/// `action.escalated`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionEscalated {
    /// The action's name in its system.
    pub action: String,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
    /// Why, as the requester said.
    #[serde(default)]
    pub reason: Option<String>,
    /// Whom to contact instead.
    pub escalate_to: String,
}

/// `action.approved`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionApproved {
    /// `run-N`.
    pub run: String,
    /// The action's name in its system.
    pub action: String,
    /// Why, as the approver said.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who asked for it.
    pub requested_by: String,
}

/// `action.started`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionStarted {
    /// `run-N`.
    pub run: String,
    /// The action's name in its system.
    pub action: String,
    /// The hosts it runs on.
    pub hosts: Vec<String>,
}

/// `action.cancelled`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionCancelled {
    /// `run-N`.
    pub run: String,
    /// The action's name in its system.
    pub action: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// Hosts where it was killed while running.
    pub killed_on: Vec<String>,
}

/// `action.host_lost`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionHostLost {
    /// `run-N`.
    pub run: String,
    /// The action's name in its system.
    pub action: String,
    /// Why.
    pub reason: String,
}

/// `action.finished`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionFinished {
    /// `run-N`.
    pub run: String,
    /// The action's name in its system.
    pub action: String,
    /// `succeeded`, `failed`, `cancelled`, or `interrupted` (the server stopped while it ran).
    pub state: String,
    /// Each host's end (absent when the run was interrupted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<BTreeMap<String, String>>,
}

/// `action.host_finished` and `action.refused`: one host's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionHostResult {
    /// `run-N`.
    pub run: String,
    /// The action's name in its system.
    pub action: String,
    /// `succeeded`, `failed`, `timed_out`, `cancelled`, `refused`.
    pub state: String,
    /// Its exit code.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// How long it ran.
    pub duration_ms: u64,
    /// The agent's words.
    pub detail: String,
    /// The end of its output.
    pub output: String,
}

/// `check.status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// `system/check`.
    pub check: String,
    /// What it looked at (a host, or `system/component#slot@host`).
    pub target: String,
    /// The status before (absent: its first result).
    #[serde(default)]
    pub from: Option<String>,
    /// The status now (`ok`, `warning`, `critical`, `unknown`).
    pub to: String,
    /// The plugin's message.
    pub message: String,
    /// The plugin's performance data, raw.
    #[serde(default)]
    pub perfdata: String,
}

/// What an alert is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CheckKey {
    /// `system/check`.
    pub check: String,
    /// What it looked at.
    pub target: String,
}

/// An acknowledgement or a note on an alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertNote {
    /// Who.
    pub author: String,
    /// What they said.
    pub comment: String,
    /// When.
    pub at_ms: i64,
}

/// An alert as it stands (every `alert.*` of its life but the delivery ones).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// What.
    pub key: CheckKey,
    /// The check's system.
    pub system: String,
    /// Where it ran (empty for an external alert without a host).
    pub host: String,
    /// `warning`, `critical`, `unknown` (`ok` once resolved).
    pub status: String,
    /// The last message.
    pub message: String,
    /// When it opened.
    pub opened_ms: i64,
    /// When its status last changed.
    pub last_change_ms: i64,
    /// Status changes since it opened.
    pub transitions: u32,
    /// Whether it flaps.
    pub flapping: bool,
    /// Who acknowledged it.
    #[serde(default)]
    pub acked: Option<AlertNote>,
    /// The ticket opened for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Why its last notification did not get through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_failed: Option<String>,
    /// Notes, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<AlertNote>,
    /// The silence that keeps it quiet.
    #[serde(default)]
    pub silenced_by: Option<u64>,
    /// Why it is only a consequence.
    #[serde(default)]
    pub consequence_of: Option<String>,
    /// When it resolved.
    #[serde(default)]
    pub resolved_ms: Option<i64>,
}

/// What a notification is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverySubject {
    /// The alert's system.
    pub system: String,
    /// Its host.
    pub host: String,
    /// Its check.
    pub check: String,
    /// Its target.
    pub target: String,
    /// `opened`, `resolved`, `changed (warning -> critical)`.
    pub reason: String,
}

/// `alert.delivery_queued`: a notification waiting to be delivered (resumed after a restart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `d_…`.
    pub id: String,
    /// The webhook.
    pub url: String,
    /// Whether it opens a ticket.
    pub ticket: bool,
    /// What it is about.
    pub subject: DeliverySubject,
    /// The body, exactly as sent.
    pub body: String,
}

/// `alert.notified` and `alert.notify_failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notified {
    /// The webhook.
    pub url: String,
    /// The delivery's id.
    pub delivery: String,
    /// Why it was sent.
    pub reason: String,
    /// The alert's check.
    pub check: String,
    /// Its target.
    pub target: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// `alert.ticket`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The ticket webhook.
    pub url: String,
    /// The delivery's id.
    pub delivery: String,
    /// The ticket's link.
    pub ticket: String,
    /// The alert's check.
    pub check: String,
    /// Its target.
    pub target: String,
    /// The alert with its ticket (absent if it closed meanwhile).
    #[serde(default)]
    pub alert: Option<Alert>,
}

/// `alert.ticket_failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketFailed {
    /// The ticket webhook.
    pub url: String,
    /// The delivery's id.
    pub delivery: String,
    /// Why.
    pub error: String,
    /// The alert's check.
    pub check: String,
    /// Its target.
    pub target: String,
}

/// `alert.handled` and `alert.handler_failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handled {
    /// The handler's program.
    pub command: String,
    /// Why it ran.
    pub reason: String,
    /// The alert's check.
    pub check: String,
    /// Its target.
    pub target: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its output (cut).
    pub output: String,
}

/// `silence.created`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    /// Its number.
    pub id: u64,
    /// Only this system's checks.
    #[serde(default)]
    pub system: Option<String>,
    /// Only this check.
    #[serde(default)]
    pub check: Option<String>,
    /// Only checks on this host.
    #[serde(default)]
    pub host: Option<String>,
    /// Only checks on hosts with all these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// From when.
    pub starts_ms: i64,
    /// Until when (excluded).
    pub ends_ms: i64,
    /// Why.
    pub reason: String,
    /// Who.
    pub author: String,
}

/// `source.added`: what the server follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDefinition {
    /// Its name.
    pub name: String,
    /// The repository's URL, without credentials.
    pub repository: String,
    /// The branch followed.
    pub branch: String,
    /// The directories (or files) of the repository read, `""` for all of it.
    pub paths: Vec<String>,
    /// How often the repository is fetched (ms).
    pub interval_ms: u64,
    /// A file holding `user:password` for HTTP(S), read at each fetch (its path only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// A file holding the secret the forge signs its webhook calls with (its path only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<String>,
}

/// `source.removed`, `source.recovered`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRemoved {
    /// The source.
    pub name: String,
}

/// `source.failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFailed {
    /// The source.
    pub name: String,
    /// Why (never with credentials).
    pub reason: String,
}

/// `source.commit`: a new head of a source's branch, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCommitSeen {
    /// The source.
    pub name: String,
    /// The repository, without credentials.
    pub repository: String,
    /// The branch.
    pub branch: String,
    /// The full commit id.
    pub commit: String,
    /// `Name <email>`.
    pub author: String,
    /// `Name <email>`.
    pub committer: String,
    /// The whole message.
    pub message: String,
    /// `applied` (a revision), `unchanged` (the paths declare what is already the latest
    /// revision), `untouched` (the commit changes nothing under the paths) or `refused`.
    pub outcome: String,
    /// The revision it became.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The commits between the previous head and this one, superseded by it (`id subject`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<String>,
    /// The previous head is not an ancestor: history was rewritten (a force-push); its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten_from: Option<String>,
    /// Why it was refused: each problem, located (`file:line:column`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// `silence.removed`, `silence.expired`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceId {
    /// The silence.
    pub id: u64,
}

/// `token.created`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// The systems it is limited to (empty: all).
    pub systems: Vec<String>,
}

/// `token.revoked`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRevoked {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
}

/// `token.admin_reset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReset {
    /// Admin tokens revoked.
    pub revoked: u64,
}

/// `note.added`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteAdded {
    /// The note.
    pub text: String,
}

/// Deleted events of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCount {
    /// The kind.
    pub kind: String,
    /// How many.
    pub deleted: u64,
}

/// A retention rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepRule {
    /// The kind (or prefix).
    pub kind: String,
    /// Kept this long.
    pub keep_s: u64,
}

/// `timeline.compacted`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compacted {
    /// Deleted, by rule.
    pub deleted: Vec<KindCount>,
    /// The rules.
    pub rules: Vec<KeepRule>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_kind_is_kept_verbatim() {
        let data = serde_json::json!({"peer": "acme", "anything": [1, 2]});
        let body = Body::parse("peer.linked", &data);
        assert!(matches!(body, Body::Unknown { .. }));
        assert_eq!(body.kind(), "peer.linked");
        assert_eq!(body.data(), data);
    }

    #[test]
    fn a_payload_that_does_not_fit_its_kind_is_kept_verbatim_with_the_reason() {
        let data = serde_json::json!({"slot": "not a number"});
        let Body::Unknown { why, data: kept, .. } = Body::parse("instance.transitioned", &data) else {
            panic!("a payload that does not fit was typed");
        };
        assert_eq!(kept, data);
        assert!(why.contains("instance.transitioned"), "{why}");
    }

    #[test]
    fn fields_a_newer_writer_adds_are_tolerated() {
        let data = serde_json::json!({"id": 3, "by": "a newer server"});
        assert_eq!(
            Body::parse("silence.removed", &data).known(),
            Some(Event::SilenceRemoved(SilenceId { id: 3 }))
        );
    }

    #[test]
    fn kinds_are_unique() {
        let unique: std::collections::BTreeSet<&str> = KINDS.iter().copied().collect();
        assert_eq!(unique.len(), KINDS.len());
    }
}
