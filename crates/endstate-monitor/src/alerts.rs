//! The alert engine: check results in, effects out.
//!
//! Per (check, target) — a [`CheckKey`] — the engine keeps the last status, the last
//! [`HISTORY`] statuses (for flap detection) and the open alert, if any:
//!
//! - A result with the same status as the last gives no [`Effect::StatusChanged`]; the first
//!   result of a key does (from `None`), without an alert when it is OK.
//! - A non-OK status opens **one** alert per key ([`Effect::AlertOpened`]) once it has lasted
//!   [`Engine::attempts`] results in a row (a *hard* state, as Nagios says; by default
//!   [`DEFAULT_ATTEMPTS`], so an instance checked a moment before it listens does not page);
//!   repeated results
//!   neither open another nor notify again (deduplication). Another non-OK status (warning to
//!   critical, or back) is [`Effect::AlertChanged`] and notifies again. OK resolves it
//!   ([`Effect::AlertResolved`]) and notifies with the reason `resolved`.
//! - **Flapping**, as Nagios measures it: the share of state changes among the last 21 results,
//!   weighted from 0.8 (oldest) to 1.2 (newest); flapping starts above 50% and stops below 25%,
//!   judged once a key has at least [`FLAP_MIN_HISTORY`] results.
//!   While a key flaps, its notifications are [`Effect::Suppressed`] with the reason.
//! - A result whose host is down (`Context::hosts_down`) is a **consequence**: its alert says
//!   so (`consequence_of`) and does not notify on its own.
//! - An active [`Silence`] that matches marks the alert `silenced_by` and suppresses its
//!   notifications, naming the silence. An expired silence simply stops matching.
//!
//! Every notification is either [`Effect::Notify`] or [`Effect::Suppressed`] with its reason,
//! so "why was nobody paged?" always has an answer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::nagios::Status;

/// How many results flap detection looks at.
pub const HISTORY: usize = 21;
/// Above this share of weighted state changes, a key starts flapping.
pub const FLAP_HIGH: f64 = 0.50;
/// Below this, it stops.
pub const FLAP_LOW: f64 = 0.25;
/// Results a key needs before it can be called flapping (fewer say too little).
pub const FLAP_MIN_HISTORY: usize = 10;
/// Notes kept on an alert (the oldest go first).
pub const MAX_NOTES: usize = 20;
/// Non-OK results in a row before an alert opens, unless the engine is told otherwise.
pub const DEFAULT_ATTEMPTS: u32 = 2;

/// One check on one target.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CheckKey {
    /// `system/check`.
    pub check: String,
    /// A host name, or an instance (`system/component#slot@host`).
    pub target: String,
}

/// One result of a check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    /// What was checked.
    pub key: CheckKey,
    /// The host the check ran on.
    pub host: String,
    /// The check's system.
    pub system: String,
    /// Its status.
    pub status: Status,
    /// Its message.
    pub message: String,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
}

/// A silence: while active, matching alerts do not notify.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Its number.
    pub id: u64,
    /// Only this system's checks.
    pub system: Option<String>,
    /// Only this check (`system/check`).
    pub check: Option<String>,
    /// Only checks running on this host.
    pub host: Option<String>,
    /// Only checks running on hosts with all these labels.
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

impl Silence {
    /// Whether it is active at `now_ms` and every field it gives matches.
    pub fn matches(&self, result: &CheckResult, host_labels: &BTreeMap<String, String>, now_ms: i64) -> bool {
        let active = self.starts_ms <= now_ms && now_ms < self.ends_ms;
        active
            && self.system.as_ref().is_none_or(|s| *s == result.system)
            && self.check.as_ref().is_none_or(|c| *c == result.key.check)
            && self.host.as_ref().is_none_or(|h| *h == result.host)
            && self.labels.iter().all(|(k, v)| host_labels.get(k) == Some(v))
    }
}

/// What the engine needs to know besides the result.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// Every silence (active or not).
    pub silences: &'a [Silence],
    /// Host labels, by host (for silences by label).
    pub host_labels: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// Hosts known to be down: their checks' alerts are consequences.
    pub hosts_down: &'a BTreeSet<String>,
    /// Systems whose parent is down: their checks' alerts are consequences too.
    pub systems_down: &'a BTreeMap<String, String>,
}

/// An acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Who.
    pub author: String,
    /// What they do about it.
    pub comment: String,
    /// When.
    pub at_ms: i64,
}

/// An alert: one per failing (check, target).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// What.
    pub key: CheckKey,
    /// The check's system.
    pub system: String,
    /// Where it ran.
    pub host: String,
    /// The current status (never OK while open).
    pub status: Status,
    /// The last message.
    pub message: String,
    /// When it opened.
    pub opened_ms: i64,
    /// When its status last changed.
    pub last_change_ms: i64,
    /// Status changes since it opened.
    pub transitions: u32,
    /// Whether the key flaps.
    pub flapping: bool,
    /// Who acknowledged it.
    pub acked: Option<Ack>,
    /// The ticket opened for it (the link the ticket webhook answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Why its last notification did not reach a handler (cleared when one gets through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_failed: Option<String>,
    /// Notes people added (oldest first, the newest [`MAX_NOTES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Ack>,
    /// The silence that keeps it quiet.
    pub silenced_by: Option<u64>,
    /// Why it is only a consequence (`host h1 is down`).
    pub consequence_of: Option<String>,
    /// When it resolved.
    pub resolved_ms: Option<i64>,
}

// === as the timeline records them ===

impl From<&Ack> for endstate_events::AlertNote {
    fn from(ack: &Ack) -> Self {
        endstate_events::AlertNote {
            author: ack.author.clone(),
            comment: ack.comment.clone(),
            at_ms: ack.at_ms,
        }
    }
}

impl From<endstate_events::AlertNote> for Ack {
    fn from(note: endstate_events::AlertNote) -> Self {
        Ack {
            author: note.author,
            comment: note.comment,
            at_ms: note.at_ms,
        }
    }
}

impl From<&Alert> for endstate_events::Alert {
    fn from(alert: &Alert) -> Self {
        endstate_events::Alert {
            key: endstate_events::CheckKey {
                check: alert.key.check.clone(),
                target: alert.key.target.clone(),
            },
            system: alert.system.clone(),
            host: alert.host.clone(),
            status: alert.status.as_str().to_owned(),
            message: alert.message.clone(),
            opened_ms: alert.opened_ms,
            last_change_ms: alert.last_change_ms,
            transitions: alert.transitions,
            flapping: alert.flapping,
            acked: alert.acked.as_ref().map(Into::into),
            ticket: alert.ticket.clone(),
            notify_failed: alert.notify_failed.clone(),
            notes: alert.notes.iter().map(Into::into).collect(),
            silenced_by: alert.silenced_by,
            consequence_of: alert.consequence_of.clone(),
            resolved_ms: alert.resolved_ms,
        }
    }
}

impl TryFrom<endstate_events::Alert> for Alert {
    type Error = String;

    /// Refused when its status is no status word.
    fn try_from(alert: endstate_events::Alert) -> Result<Self, String> {
        let status = Status::parse(&alert.status).ok_or_else(|| format!("no status {:?}", alert.status))?;
        Ok(Alert {
            key: CheckKey {
                check: alert.key.check,
                target: alert.key.target,
            },
            system: alert.system,
            host: alert.host,
            status,
            message: alert.message,
            opened_ms: alert.opened_ms,
            last_change_ms: alert.last_change_ms,
            transitions: alert.transitions,
            flapping: alert.flapping,
            acked: alert.acked.map(Into::into),
            ticket: alert.ticket,
            notify_failed: alert.notify_failed,
            notes: alert.notes.into_iter().map(Into::into).collect(),
            silenced_by: alert.silenced_by,
            consequence_of: alert.consequence_of,
            resolved_ms: alert.resolved_ms,
        })
    }
}

impl From<&Silence> for endstate_events::Silence {
    fn from(silence: &Silence) -> Self {
        endstate_events::Silence {
            id: silence.id,
            system: silence.system.clone(),
            check: silence.check.clone(),
            host: silence.host.clone(),
            labels: silence.labels.clone(),
            starts_ms: silence.starts_ms,
            ends_ms: silence.ends_ms,
            reason: silence.reason.clone(),
            author: silence.author.clone(),
        }
    }
}

impl From<endstate_events::Silence> for Silence {
    fn from(silence: endstate_events::Silence) -> Self {
        Silence {
            id: silence.id,
            system: silence.system,
            check: silence.check,
            host: silence.host,
            labels: silence.labels,
            starts_ms: silence.starts_ms,
            ends_ms: silence.ends_ms,
            reason: silence.reason,
            author: silence.author,
        }
    }
}

/// What the engine decided about one result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// The status of a key changed (`from: None` for its first result).
    StatusChanged {
        /// The key.
        key: CheckKey,
        /// Before.
        from: Option<Status>,
        /// Now.
        to: Status,
        /// The result's message.
        message: String,
    },
    /// An alert opened.
    AlertOpened {
        /// The alert.
        alert: Alert,
    },
    /// An open alert changed status, or started or stopped flapping.
    AlertChanged {
        /// The alert.
        alert: Alert,
    },
    /// An alert resolved.
    AlertResolved {
        /// The alert, with `resolved_ms`.
        alert: Alert,
    },
    /// Someone should hear of it (handlers run).
    Notify {
        /// The alert.
        alert: Alert,
        /// `opened`, `changed (warning -> critical)`, `resolved`.
        reason: String,
    },
    /// A notification that does not go out, and why.
    Suppressed {
        /// The alert.
        alert: Alert,
        /// Why not: the silence, the down host, flapping.
        reason: String,
    },
}

#[derive(Clone, Debug, Default)]
struct KeyState {
    last: Option<Status>,
    /// Non-OK results in a row.
    failing: u32,
    history: VecDeque<Status>,
    flapping: bool,
    alert: Option<Alert>,
}

/// The engine's state: per key, the last status, a short history and the open alert.
#[derive(Clone, Debug)]
pub struct Engine {
    /// Non-OK results in a row before an alert opens (at least 1).
    pub attempts: u32,
    keys: BTreeMap<CheckKey, KeyState>,
    /// The keys with an open alert (listing alerts must not walk every key: a fleet has far
    /// more checks than open alerts).
    open: BTreeSet<CheckKey>,
    /// Counts the alerts opened, changed and resolved: what was derived from the open alerts
    /// is still good while it is the same.
    version: u64,
}

impl Default for Engine {
    fn default() -> Engine {
        Engine::new(DEFAULT_ATTEMPTS)
    }
}

/// The weighted share of state changes in `history` (oldest first), Nagios-style.
pub fn percent_state_change(history: &VecDeque<Status>) -> f64 {
    let n = history.len();
    if n < 2 {
        return 0.0;
    }
    let mut changes = 0.0;
    let mut total = 0.0;
    for i in 1..n {
        // Weights from 0.8 (oldest change) to 1.2 (newest).
        let weight = 0.8 + 0.4 * (i - 1) as f64 / ((n - 2).max(1)) as f64;
        total += weight;
        if history[i] != history[i - 1] {
            changes += weight;
        }
    }
    changes / total
}

impl Engine {
    /// An engine that opens an alert after `attempts` non-OK results in a row (0 counts as 1).
    pub fn new(attempts: u32) -> Engine {
        Engine {
            attempts: attempts.max(1),
            keys: BTreeMap::new(),
            open: BTreeSet::new(),
            version: 0,
        }
    }

    /// Takes one result; says what follows from it.
    pub fn observe(&mut self, result: CheckResult, ctx: &Context<'_>) -> Vec<Effect> {
        let mut effects = Vec::new();
        let state = self.keys.entry(result.key.clone()).or_default();
        let from = state.last;
        state.last = Some(result.status);
        state.failing = if result.status == Status::Ok {
            0
        } else {
            state.failing.saturating_add(1)
        };
        state.history.push_back(result.status);
        while state.history.len() > HISTORY {
            state.history.pop_front();
        }
        let share = if state.history.len() >= FLAP_MIN_HISTORY {
            percent_state_change(&state.history)
        } else {
            0.0
        };
        let was_flapping = state.flapping;
        if !was_flapping && share > FLAP_HIGH {
            state.flapping = true;
        } else if was_flapping && share < FLAP_LOW {
            state.flapping = false;
        }
        let flap_changed = was_flapping != state.flapping;
        if from != Some(result.status) {
            effects.push(Effect::StatusChanged {
                key: result.key.clone(),
                from,
                to: result.status,
                message: result.message.clone(),
            });
        }
        let quiet = quiet_reason(&result, ctx, state.flapping);
        let (silenced_by, consequence_of) = (quiet.silence, quiet.consequence.clone());
        match (&mut state.alert, result.status) {
            (None, Status::Ok) => {}
            // A soft state: not an alert yet.
            (None, _) if state.failing < self.attempts => {}
            (None, status) => {
                let alert = Alert {
                    key: result.key.clone(),
                    system: result.system.clone(),
                    host: result.host.clone(),
                    status,
                    message: result.message.clone(),
                    opened_ms: result.at_ms,
                    last_change_ms: result.at_ms,
                    transitions: 0,
                    flapping: state.flapping,
                    acked: None,
                    ticket: None,
                    notify_failed: None,
                    notes: Vec::new(),
                    silenced_by,
                    consequence_of,
                    resolved_ms: None,
                };
                effects.push(Effect::AlertOpened { alert: alert.clone() });
                effects.push(notification(&alert, "opened".to_owned(), quiet.reason.as_deref()));
                state.alert = Some(alert);
                self.open.insert(result.key.clone());
                self.version += 1;
            }
            (Some(alert), Status::Ok) => {
                alert.transitions += 1;
                alert.status = Status::Ok;
                alert.message = result.message.clone();
                alert.last_change_ms = result.at_ms;
                alert.resolved_ms = Some(result.at_ms);
                alert.flapping = state.flapping;
                alert.silenced_by = silenced_by;
                alert.consequence_of = consequence_of;
                let alert = alert.clone();
                effects.push(Effect::AlertResolved { alert: alert.clone() });
                effects.push(notification(&alert, "resolved".to_owned(), quiet.reason.as_deref()));
                state.alert = None;
                self.open.remove(&result.key);
                self.version += 1;
            }
            (Some(alert), status) => {
                alert.message = result.message.clone();
                alert.silenced_by = silenced_by;
                alert.consequence_of = consequence_of;
                alert.flapping = state.flapping;
                if status != alert.status {
                    let reason = format!("changed ({} -> {})", alert.status.as_str(), status.as_str());
                    alert.transitions += 1;
                    alert.status = status;
                    alert.last_change_ms = result.at_ms;
                    let alert = alert.clone();
                    effects.push(Effect::AlertChanged { alert: alert.clone() });
                    effects.push(notification(&alert, reason, quiet.reason.as_deref()));
                    self.version += 1;
                } else if flap_changed {
                    effects.push(Effect::AlertChanged { alert: alert.clone() });
                }
            }
        }
        effects
    }

    /// Acknowledges the open alert of `key`; `None` when there is none.
    pub fn ack(&mut self, key: &CheckKey, ack: Ack) -> Option<Alert> {
        let alert = self.keys.get_mut(key)?.alert.as_mut()?;
        alert.acked = Some(ack);
        Some(alert.clone())
    }

    /// Records whether the last notification of the open alert of `key` failed (and why);
    /// `None` when there is no open alert.
    pub fn set_notify_failed(&mut self, key: &CheckKey, failed: Option<String>) -> Option<Alert> {
        let alert = self.keys.get_mut(key)?.alert.as_mut()?;
        alert.notify_failed = failed;
        Some(alert.clone())
    }

    /// Records the ticket opened for the open alert of `key`; `None` when there is none.
    pub fn set_ticket(&mut self, key: &CheckKey, link: String) -> Option<Alert> {
        let alert = self.keys.get_mut(key)?.alert.as_mut()?;
        alert.ticket = Some(link);
        Some(alert.clone())
    }

    /// Adds a note to the open alert of `key`; `None` when there is none.
    pub fn annotate(&mut self, key: &CheckKey, note: Ack) -> Option<Alert> {
        let alert = self.keys.get_mut(key)?.alert.as_mut()?;
        alert.notes.push(note);
        if alert.notes.len() > MAX_NOTES {
            let extra = alert.notes.len() - MAX_NOTES;
            alert.notes.drain(..extra);
        }
        Some(alert.clone())
    }

    /// Takes back an open alert known from before (the timeline, after a restart): its key is
    /// hard in the alert's status, so the next failing result neither opens it again nor
    /// notifies again, and the next OK result resolves it. A resolved alert is ignored.
    pub fn restore(&mut self, alert: Alert) {
        if alert.status == Status::Ok || alert.resolved_ms.is_some() {
            return;
        }
        let state = self.keys.entry(alert.key.clone()).or_default();
        state.last = Some(alert.status);
        state.failing = self.attempts;
        state.flapping = alert.flapping;
        state.history = VecDeque::from([alert.status]);
        self.open.insert(alert.key.clone());
        self.version += 1;
        state.alert = Some(alert);
    }

    /// The open alerts, by key.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.open
            .iter()
            .filter_map(|key| self.keys.get(key).and_then(|state| state.alert.as_ref()))
    }

    /// Changes whenever an alert opens, changes status or resolves.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Non-OK results of a key in a row, the last one included (0 when it is OK or unknown).
    pub fn failing(&self, key: &CheckKey) -> u32 {
        self.keys.get(key).map_or(0, |state| state.failing)
    }

    /// Whether a key flaps now.
    pub fn flapping(&self, key: &CheckKey) -> bool {
        self.keys.get(key).is_some_and(|state| state.flapping)
    }

    /// Forgets a key (its check or target is gone).
    pub fn forget(&mut self, key: &CheckKey) {
        self.keys.remove(key);
        if self.open.remove(key) {
            self.version += 1;
        }
    }
}

struct Quiet {
    silence: Option<u64>,
    consequence: Option<String>,
    reason: Option<String>,
}

/// Why a notification of this result would not go out, if it would not.
fn quiet_reason(result: &CheckResult, ctx: &Context<'_>, flapping: bool) -> Quiet {
    let empty = BTreeMap::new();
    let labels = ctx.host_labels.get(&result.host).unwrap_or(&empty);
    let silence = ctx.silences.iter().find(|s| s.matches(result, labels, result.at_ms));
    let consequence = if ctx.hosts_down.contains(&result.host) {
        Some(format!("host {} is down", result.host))
    } else {
        ctx.systems_down.get(&result.system).cloned()
    };
    let reason = if let Some(silence) = silence {
        Some(format!(
            "silenced by silence {} of {} until {}: {}",
            silence.id, silence.author, silence.ends_ms, silence.reason
        ))
    } else if let Some(consequence) = &consequence {
        Some(format!("a consequence: {consequence}"))
    } else if flapping {
        Some("the check is flapping".to_owned())
    } else {
        None
    };
    Quiet {
        silence: silence.map(|s| s.id),
        consequence,
        reason,
    }
}

fn notification(alert: &Alert, reason: String, quiet: Option<&str>) -> Effect {
    match quiet {
        None => Effect::Notify {
            alert: alert.clone(),
            reason,
        },
        Some(why) => Effect::Suppressed {
            alert: alert.clone(),
            reason: format!("{reason}: {why}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CheckKey {
        CheckKey {
            check: "shop/http".into(),
            target: "shop/web#0@h1".into(),
        }
    }

    fn result(status: Status, at_ms: i64) -> CheckResult {
        CheckResult {
            key: key(),
            host: "h1".into(),
            system: "shop".into(),
            status,
            message: format!("{} at {at_ms}", status.as_str()),
            at_ms,
        }
    }

    fn kinds(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::StatusChanged { from, to, .. } => {
                    format!("status {}->{}", from.map_or("none", |f| f.as_str()), to.as_str())
                }
                Effect::AlertOpened { alert } => format!("opened {}", alert.status.as_str()),
                Effect::AlertChanged { alert } => format!("changed {}", alert.status.as_str()),
                Effect::AlertResolved { .. } => "resolved".into(),
                Effect::Notify { reason, .. } => format!("notify {reason}"),
                Effect::Suppressed { reason, .. } => format!("suppressed {reason}"),
            })
            .collect()
    }

    struct World {
        silences: Vec<Silence>,
        labels: BTreeMap<String, BTreeMap<String, String>>,
        down: BTreeSet<String>,
        systems_down: BTreeMap<String, String>,
    }

    impl World {
        fn new() -> World {
            World {
                silences: Vec::new(),
                labels: BTreeMap::new(),
                down: BTreeSet::new(),
                systems_down: BTreeMap::new(),
            }
        }
        fn ctx(&self) -> Context<'_> {
            Context {
                silences: &self.silences,
                host_labels: &self.labels,
                hosts_down: &self.down,
                systems_down: &self.systems_down,
            }
        }
    }

    #[test]
    fn one_alert_per_key_escalation_and_resolution() {
        let world = World::new();
        let mut engine = Engine::new(1);
        assert_eq!(
            kinds(&engine.observe(result(Status::Ok, 1), &world.ctx())),
            ["status none->ok"]
        );
        assert!(engine.observe(result(Status::Ok, 2), &world.ctx()).is_empty());
        assert_eq!(
            kinds(&engine.observe(result(Status::Warning, 3), &world.ctx())),
            ["status ok->warning", "opened warning", "notify opened"]
        );
        assert!(
            engine.observe(result(Status::Warning, 4), &world.ctx()).is_empty(),
            "deduplicated"
        );
        assert_eq!(
            kinds(&engine.observe(result(Status::Critical, 5), &world.ctx())),
            [
                "status warning->critical",
                "changed critical",
                "notify changed (warning -> critical)"
            ]
        );
        assert_eq!(engine.alerts().count(), 1);
        let open = engine.alerts().next().unwrap();
        assert_eq!((open.opened_ms, open.last_change_ms, open.transitions), (3, 5, 1));
        assert_eq!(
            kinds(&engine.observe(result(Status::Ok, 6), &world.ctx())),
            ["status critical->ok", "resolved", "notify resolved"]
        );
        assert_eq!(engine.alerts().count(), 0);
    }

    #[test]
    fn a_failure_opens_an_alert_once_it_is_hard() {
        let world = World::new();
        let mut engine = Engine::default();
        assert_eq!(engine.attempts, DEFAULT_ATTEMPTS);
        // A first failure is soft: no alert, no page (an instance not listening yet).
        assert_eq!(
            kinds(&engine.observe(result(Status::Critical, 1), &world.ctx())),
            ["status none->critical"]
        );
        assert_eq!(
            kinds(&engine.observe(result(Status::Ok, 2), &world.ctx())),
            ["status critical->ok"]
        );
        assert_eq!(engine.alerts().count(), 0);
        assert_eq!(
            kinds(&engine.observe(result(Status::Critical, 3), &world.ctx())),
            ["status ok->critical"]
        );
        assert_eq!(
            kinds(&engine.observe(result(Status::Critical, 4), &world.ctx())),
            ["opened critical", "notify opened"]
        );
        assert_eq!(engine.alerts().next().unwrap().opened_ms, 4);
        let mut once = Engine::new(1);
        assert_eq!(
            kinds(&once.observe(result(Status::Critical, 1), &world.ctx())),
            ["status none->critical", "opened critical", "notify opened"]
        );
    }

    #[test]
    fn silences_match_by_field_and_time_and_are_named() {
        let mut world = World::new();
        world
            .labels
            .insert("h1".into(), [("zone".to_owned(), "a".to_owned())].into_iter().collect());
        let silence = Silence {
            id: 7,
            system: Some("shop".into()),
            check: None,
            host: None,
            labels: [("zone".to_owned(), "a".to_owned())].into_iter().collect(),
            starts_ms: 0,
            ends_ms: 100,
            reason: "maintenance".into(),
            author: "ana".into(),
        };
        let r = result(Status::Critical, 50);
        assert!(silence.matches(&r, &world.labels["h1"], 50));
        assert!(!silence.matches(&r, &world.labels["h1"], 100), "expired");
        assert!(!silence.matches(&r, &BTreeMap::new(), 50), "labels must match");
        let other = Silence {
            host: Some("h2".into()),
            ..silence.clone()
        };
        assert!(!other.matches(&r, &world.labels["h1"], 50));
        world.silences.push(silence);
        let mut engine = Engine::new(1);
        let effects = engine.observe(r, &world.ctx());
        assert_eq!(
            kinds(&effects),
            [
                "status none->critical",
                "opened critical",
                "suppressed opened: silenced by silence 7 of ana until 100: maintenance"
            ]
        );
        assert_eq!(engine.alerts().next().unwrap().silenced_by, Some(7));
        // After it expires, the next change notifies.
        assert_eq!(
            kinds(&engine.observe(result(Status::Ok, 150), &world.ctx())),
            ["status critical->ok", "resolved", "notify resolved"]
        );
    }

    #[test]
    fn a_down_host_makes_a_consequence_that_does_not_page() {
        let mut world = World::new();
        world.down.insert("h1".into());
        let mut engine = Engine::new(1);
        let effects = engine.observe(result(Status::Critical, 1), &world.ctx());
        assert_eq!(kinds(&effects)[2], "suppressed opened: a consequence: host h1 is down");
        assert_eq!(
            engine.alerts().next().unwrap().consequence_of.as_deref(),
            Some("host h1 is down")
        );
    }

    #[test]
    fn a_system_whose_dependency_is_down_makes_a_consequence_that_says_which() {
        let mut world = World::new();
        world.systems_down.insert(
            "shop".into(),
            "shop/web depends on payments/api, whose check payments/http on payments/api#0@h2 is critical".into(),
        );
        let mut engine = Engine::new(1);
        let effects = engine.observe(result(Status::Critical, 1), &world.ctx());
        assert_eq!(
            kinds(&effects)[2],
            "suppressed opened: a consequence: shop/web depends on payments/api, whose check payments/http on payments/api#0@h2 is critical"
        );
        // The dependency recovers: the next change of the alert notifies again.
        world.systems_down.clear();
        let effects = engine.observe(result(Status::Warning, 2), &world.ctx());
        assert_eq!(kinds(&effects)[2], "notify changed (critical -> warning)");
    }

    #[test]
    fn flapping_starts_and_stops_and_suppresses_while_on() {
        let world = World::new();
        let mut engine = Engine::new(1);
        let mut notified = 0;
        let mut suppressed = 0;
        let mut t = 0;
        // Alternating: every result a change; judged from the tenth result on.
        for i in 0..16 {
            t += 1;
            let status = if i % 2 == 0 { Status::Critical } else { Status::Ok };
            for effect in engine.observe(result(status, t), &world.ctx()) {
                match effect {
                    Effect::Notify { .. } => notified += 1,
                    Effect::Suppressed { reason, .. } => {
                        assert!(reason.ends_with("the check is flapping"), "{reason}");
                        suppressed += 1;
                    }
                    _ => {}
                }
            }
        }
        assert!(engine.flapping(&key()));
        assert_eq!((notified, suppressed), (9, 7), "the tenth result starts the flapping");
        // Steady OK for long enough stops it.
        for _ in 0..HISTORY {
            t += 1;
            engine.observe(result(Status::Ok, t), &world.ctx());
        }
        assert!(!engine.flapping(&key()));
        assert_eq!(
            kinds(&engine.observe(result(Status::Critical, t + 1), &world.ctx()))[2],
            "notify opened"
        );
    }

    #[test]
    fn percent_state_change_weights_recent_changes_more() {
        let steady: VecDeque<Status> = std::iter::repeat_n(Status::Ok, HISTORY).collect();
        assert_eq!(percent_state_change(&steady), 0.0);
        let mut old_change = steady.clone();
        old_change[0] = Status::Critical;
        let mut new_change = steady.clone();
        new_change[HISTORY - 1] = Status::Critical;
        assert!(percent_state_change(&new_change) > percent_state_change(&old_change));
        let alternating: VecDeque<Status> = (0..HISTORY)
            .map(|i| if i % 2 == 0 { Status::Ok } else { Status::Critical })
            .collect();
        assert!((percent_state_change(&alternating) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_restored_alert_neither_reopens_nor_notifies_again_and_resolves_on_ok() {
        let w = World::new();
        let mut before = Engine::new(2);
        before.observe(result(Status::Critical, 1), &w.ctx());
        let opened = before.observe(result(Status::Critical, 2), &w.ctx());
        assert_eq!(kinds(&opened), ["opened critical", "notify opened"]);
        let ack = Ack {
            author: "ann".into(),
            comment: "on it".into(),
            at_ms: 3,
        };
        let alert = before.ack(&key(), ack.clone()).unwrap();

        // A new engine (a restarted server) given the alert from the timeline.
        let mut after = Engine::new(2);
        after.restore(alert.clone());
        assert_eq!(after.alerts().collect::<Vec<_>>(), [&alert]);
        assert!(after.observe(result(Status::Critical, 4), &w.ctx()).is_empty());
        assert_eq!(after.alerts().next().unwrap().acked, Some(ack));
        assert_eq!(
            kinds(&after.observe(result(Status::Warning, 5), &w.ctx())),
            [
                "status critical->warning",
                "changed warning",
                "notify changed (critical -> warning)"
            ]
        );
        let resolved = after.observe(result(Status::Ok, 6), &w.ctx());
        assert_eq!(kinds(&resolved), ["status warning->ok", "resolved", "notify resolved"]);
        assert_eq!(after.alerts().count(), 0);

        // A resolved alert is not taken back.
        let mut again = Engine::new(2);
        again.restore(Alert {
            resolved_ms: Some(6),
            ..alert
        });
        assert_eq!(again.alerts().count(), 0);
    }

    #[test]
    fn ack_marks_the_open_alert_only() {
        let world = World::new();
        let mut engine = Engine::new(1);
        let ack = Ack {
            author: "ana".into(),
            comment: "on it".into(),
            at_ms: 3,
        };
        assert!(engine.ack(&key(), ack.clone()).is_none());
        engine.observe(result(Status::Critical, 1), &world.ctx());
        assert_eq!(engine.ack(&key(), ack.clone()).unwrap().acked, Some(ack));
        engine.forget(&key());
        assert_eq!(engine.alerts().count(), 0);
    }
}
