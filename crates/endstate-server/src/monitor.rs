//! Monitoring on the server: check results from the agents go through the alert engine
//! (`endstate_monitor::alerts`, pure); what it decides goes on the timeline, and notifications go
//! to the configured handlers (webhooks, command handlers, the ticket webhook).
//!
//! # Flow
//! 1. An agent's `check` observations are stored with the batch they came in (acknowledged as
//!    usual), then handed to [`ingest`].
//! 2. The engine keeps one state per (check, target): a status change is a `check.status` event;
//!    a non-OK status that lasts two results in a row opens one alert (`alert.opened`; one failed
//!    result alone is a soft state, e.g. an instance checked before it listens), a change of
//!    severity is `alert.changed`,
//!    OK resolves it (`alert.resolved`); a notification suppressed by a silence, a down host, a
//!    critical dependency in another system or flapping is `alert.suppressed` with the reason.
//! 3. A notification is handed to the handlers by a task of its own, so a slow or dead one never
//!    holds up the pipeline: POSTed to every webhook ([`MonitorConfig::webhooks`]), retried with
//!    backoff (0.5 s doubling, 5 attempts, 5 s timeout each); given on stdin to every command
//!    handler ([`MonitorConfig::commands`]); for an alert that opens, POSTed to the ticket
//!    webhook, whose answered link is kept on the alert. Outcomes: `alert.notified`,
//!    `alert.notify_failed`, `alert.handled`, `alert.handler_failed`, `alert.ticket`,
//!    `alert.ticket_failed` on the timeline, and `notify_failed` on the alert while the last
//!    notification did not get through.
//!
//! # State across restarts
//! The engine lives in memory; at start, [`load_silences`] and [`load_alerts`] take back the
//! active silences and the open alerts (with their acknowledgements and tickets) from the
//! timeline, so a check still failing after a restart neither opens its alert again nor pages
//! again. What is not taken back: flap histories and soft states (a check that had failed once
//! needs two failures again), and the statuses of checks without an open alert (their first
//! result after a restart is a `check.status` from `none`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use endstate_agent_proto::CheckResult;
use endstate_api::{AlertHistory, AlertView, FiredAlert, ReviewView, SilenceView};
use endstate_events::Event;
use endstate_monitor::alerts::{self, Alert, CheckKey, Context, Effect, Engine};
use endstate_monitor::nagios::Status;
use endstate_store::NewEvent;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;

/// Where alerts go.
#[derive(Clone, Debug, Default)]
pub struct MonitorConfig {
    /// URLs every notification is POSTed to, as JSON (see [`Notification`]).
    pub webhooks: Vec<String>,
    /// Programs run for every notification (command handlers), with its JSON on stdin and
    /// `ENDSTATE_ALERT_*` variables; no shell, no arguments: the operator's own script.
    pub commands: Vec<std::path::PathBuf>,
    /// A URL POSTed the notification of every alert that opens (and notifies): it opens a
    /// ticket and answers JSON with its link (`url`, `link` or `ticket_url`), stored on the
    /// alert and shown with it.
    pub ticket_webhook: Option<String>,
    /// The secret webhook and ticket calls are signed with (`endstate-signature`); the server
    /// makes one in its data directory (`webhook-secret`, mode 0600) when none is given.
    pub webhook_secret: Option<Vec<u8>>,
}

/// How long a command handler may run before its process group is killed.
const HANDLER_TIMEOUT: Duration = Duration::from_secs(30);
/// Output of a command handler kept on the timeline.
const HANDLER_OUTPUT: usize = 4096;

/// The server's monitoring state.
pub(crate) struct Monitor {
    engine: Mutex<Engine>,
    /// The latest result of every agent check, by (check, target), for check gates.
    latest: Mutex<std::collections::HashMap<CheckKey, Latest>>,
    /// The last [`dependencies_down`]: for the engine's version it was computed at, and when.
    dependencies: Mutex<(u64, i64, BTreeMap<String, String>)>,
    /// Alerts received from Alertmanager (hard at once: Prometheus already waited `for`).
    external: Mutex<Engine>,
    /// Active silences (rebuilt from the timeline's `silence.*` events at start).
    silences: Mutex<Vec<alerts::Silence>>,
    next_silence: std::sync::atomic::AtomicU64,
    config: MonitorConfig,
    client: reqwest::Client,
}

/// The latest result of a check on a target.
#[derive(Clone, Debug)]
pub(crate) struct Latest {
    pub(crate) status: Status,
    /// Its performance data, by label.
    pub(crate) perfdata: Vec<(String, f64)>,
    pub(crate) at_ms: i64,
}

/// The JSON a webhook receives.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Notification<'a> {
    /// Always `endstate.alert`.
    pub(crate) kind: &'static str,
    /// Why it is sent: `opened`, `changed (warning -> critical)`, `resolved`.
    pub(crate) reason: &'a str,
    /// The alert, as `GET /v1/alerts` shows it.
    pub(crate) alert: &'a Alert,
    /// Always broken, or did it just happen: `label` (`new`, `chronic`, `ok`), `failing_since`,
    /// `first_failed`, `failing_7d_percent`, `flapping` of the check on that host; null when
    /// the check has no stored result (an Alertmanager alert).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) history: Option<AlertHistory>,
}

/// An alert as the API shows it.
pub(crate) fn alert_view(alert: &Alert, history: Option<AlertHistory>) -> AlertView {
    let note = |n: &alerts::Ack| endstate_api::AlertNoteView {
        author: n.author.clone(),
        comment: n.comment.clone(),
        at_ms: n.at_ms,
    };
    AlertView {
        key: endstate_api::CheckKeyView {
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
        acked: alert.acked.as_ref().map(note),
        ticket: alert.ticket.clone(),
        notify_failed: alert.notify_failed.clone(),
        notes: alert.notes.iter().map(note).collect(),
        silenced_by: alert.silenced_by,
        consequence_of: alert.consequence_of.clone(),
        resolved_ms: alert.resolved_ms,
        history,
    }
}

/// A silence as the API shows it.
pub(crate) fn silence_view(silence: &alerts::Silence) -> SilenceView {
    SilenceView {
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

impl Monitor {
    /// `client` is the server's outgoing client ([`crate::http_client`]); every webhook and
    /// ticket call sets its own timeout.
    pub(crate) fn new(config: MonitorConfig, client: reqwest::Client) -> Monitor {
        Monitor {
            engine: Mutex::new(Engine::default()),
            latest: Mutex::new(std::collections::HashMap::new()),
            dependencies: Mutex::new((u64::MAX, 0, BTreeMap::new())),
            external: Mutex::new(Engine::new(1)),
            silences: Mutex::new(Vec::new()),
            next_silence: std::sync::atomic::AtomicU64::new(1),
            config,
            client,
        }
    }

    /// The open alerts, by check and target: the agents' checks', then Alertmanager's.
    pub(crate) fn alerts(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self.engine().alerts().cloned().collect();
        alerts.extend(self.external().alerts().cloned());
        alerts
    }

    /// A check gate's measure on a component's instances: the latest results of `check` on
    /// targets of `component` no older than `fresh_ms` before `now`; with `perfdata`, the
    /// largest value of that label among them, else how many are not OK. Also says what was
    /// measured, for people.
    pub(crate) fn check_gate(
        &self,
        check: &str,
        component: &str,
        perfdata: Option<&str>,
        now_ms: i64,
        fresh_ms: i64,
    ) -> (Result<f64, String>, String) {
        let latest = self.latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let prefix = format!("{component}#");
        let mut fresh: Vec<(&CheckKey, &Latest)> = latest
            .iter()
            .filter(|(key, result)| {
                key.check == check && key.target.starts_with(&prefix) && now_ms - result.at_ms <= fresh_ms
            })
            .collect();
        fresh.sort_by(|a, b| a.0.cmp(b.0));
        let seconds = fresh_ms / 1000;
        if fresh.is_empty() {
            return (
                Err(format!(
                    "no result of check {check} on an instance of {component} in the last {seconds}s"
                )),
                format!("check {check} on {component}'s instances"),
            );
        }
        match perfdata {
            None => {
                // A hard state, as for alerts (the engine counts the failures in a row): one
                // failed result alone (an instance checked while it is being replaced) is not a
                // failure yet.
                let engine = self.engine();
                let in_a_row: Vec<(&CheckKey, &Latest, u32)> = fresh
                    .iter()
                    .map(|(k, r)| (*k, *r, if r.status == Status::Ok { 0 } else { engine.failing(k) }))
                    .collect();
                drop(engine);
                let failing: Vec<String> = in_a_row
                    .iter()
                    .filter(|(_, _, n)| *n >= alerts::DEFAULT_ATTEMPTS)
                    .map(|(k, r, n)| format!("{} {} {n} times in a row", k.target, r.status.as_str()))
                    .collect();
                let soft = in_a_row.iter().filter(|(_, _, n)| *n == 1).count();
                let source = if failing.is_empty() {
                    let soft = if soft > 0 {
                        format!(" ({soft} with one failed result, not counted yet)")
                    } else {
                        String::new()
                    };
                    format!(
                        "check {check}: {} instance(s) of {component}, all OK{soft}",
                        fresh.len()
                    )
                } else {
                    format!(
                        "check {check}: {} of {} instance(s) of {component} not OK ({})",
                        failing.len(),
                        fresh.len(),
                        failing.join(", ")
                    )
                };
                (Ok(failing.len() as f64), source)
            }
            Some(label) => {
                let values: Vec<(&str, f64)> = fresh
                    .iter()
                    .filter_map(|(k, r)| {
                        r.perfdata
                            .iter()
                            .find(|(l, _)| l == label)
                            .map(|(_, v)| (k.target.as_str(), *v))
                    })
                    .collect();
                let Some((target, max)) = values.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)) else {
                    return (
                        Err(format!(
                            "no result of check {check} on {component}'s instances has performance data `{label}`"
                        )),
                        format!("check {check} perfdata {label} on {component}'s instances"),
                    );
                };
                (
                    Ok(max),
                    format!(
                        "check {check} perfdata {label}: the largest of {} instance(s) of {component} ({target})",
                        values.len()
                    ),
                )
            }
        }
    }

    /// Records whether the last notification of the open alert of `key` failed.
    pub(crate) fn set_notify_failed(&self, key: &CheckKey, failed: Option<String>) -> Option<Alert> {
        if is_external(key) {
            self.external().set_notify_failed(key, failed)
        } else {
            self.engine().set_notify_failed(key, failed)
        }
    }

    /// Records the ticket of the open alert of `key`.
    pub(crate) fn set_ticket(&self, key: &CheckKey, link: String) -> Option<Alert> {
        if is_external(key) {
            self.external().set_ticket(key, link)
        } else {
            self.engine().set_ticket(key, link)
        }
    }

    /// Adds a note to the open alert of `key`.
    pub(crate) fn annotate(&self, key: &CheckKey, note: alerts::Ack) -> Option<Alert> {
        if is_external(key) {
            self.external().annotate(key, note)
        } else {
            self.engine().annotate(key, note)
        }
    }

    /// Acknowledges the open alert of `key`.
    pub(crate) fn ack(&self, key: &CheckKey, ack: alerts::Ack) -> Option<Alert> {
        self.engine()
            .ack(key, ack.clone())
            .or_else(|| self.external().ack(key, ack))
    }

    fn external(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.external.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A silence number never used (numbered from 1; after a restart, after the highest on the
    /// timeline).
    fn next_silence_id(&self) -> u64 {
        self.next_silence.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn silences(&self) -> std::sync::MutexGuard<'_, Vec<alerts::Silence>> {
        self.silences.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Most silences active at once.
const MAX_SILENCES: usize = 10_000;
/// How far ahead a silence may end.
const MAX_SILENCE_MS: i64 = 30 * 24 * 3600 * 1000;

/// Rebuilds the active silences from the timeline (`silence.created` minus `silence.removed`
/// and `silence.expired`), at start.
pub(crate) async fn load_silences(state: &AppState) -> Result<(), ApiError> {
    let now = state.now_ms();
    let mut created: BTreeMap<u64, alerts::Silence> = BTreeMap::new();
    let mut highest = 0;
    // Every silence ever made: their numbers are never reused.
    crate::record::replay_events(state, "silence.", |event| match event.typed() {
        Some(Event::SilenceCreated(silence)) => {
            highest = highest.max(silence.id);
            created.insert(silence.id, silence.into());
        }
        Some(Event::SilenceRemoved(gone) | Event::SilenceExpired(gone)) => {
            highest = highest.max(gone.id);
            created.remove(&gone.id);
        }
        _ => {}
    })
    .await?;
    *state.monitor().silences() = created.into_values().filter(|s| s.ends_ms > now).collect();
    state
        .monitor()
        .next_silence
        .fetch_max(highest.saturating_add(1), std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// How far back the timeline is read for open alerts at start: an alert with no event in
/// that long (not changed, acknowledged or held back) is not taken back.
const RESTORE_ALERTS_MS: i64 = 90 * 24 * 3600 * 1000;
/// At most this many alert events are read at start (newest first).
const RESTORE_ALERTS_EVENTS: usize = 2_000_000;

/// Takes back the alerts that were open when the server stopped, from the timeline: per
/// (check, target), its newest `alert.opened`, `alert.changed`, `alert.acknowledged`,
/// `alert.annotated`, `alert.suppressed`, `alert.ticket` or `alert.resolved` event carries the alert as it was;
/// unless that is `alert.resolved`, the alert is open again, with its acknowledgement, and the
/// next failing result of its check neither opens it again nor notifies again.
pub(crate) async fn load_alerts(state: &AppState) -> Result<(), ApiError> {
    let now = state.now_ms();
    let mut seen: BTreeSet<CheckKey> = BTreeSet::new();
    let mut open: Vec<Alert> = Vec::new();
    let mut before = None;
    let mut read = 0;
    loop {
        let page = state
            .store()
            .query_events(&endstate_store::EventQuery {
                kinds: Some(
                    [
                        "alert.opened",
                        "alert.changed",
                        "alert.acknowledged",
                        "alert.annotated",
                        "alert.suppressed",
                        "alert.ticket",
                        "alert.resolved",
                    ]
                    .map(String::from)
                    .to_vec(),
                ),
                since_ms: Some(now - RESTORE_ALERTS_MS),
                before,
                limit: 1000,
                ..endstate_store::EventQuery::default()
            })
            .await?;
        read += page.items.len();
        for event in &page.items {
            let (recorded, resolved) = match event.typed() {
                Some(Event::AlertTicket(ticket)) => match ticket.alert {
                    Some(alert) => (alert, false),
                    None => continue,
                },
                Some(Event::AlertResolved(alert)) => (alert, true),
                Some(
                    Event::AlertOpened(alert)
                    | Event::AlertChanged(alert)
                    | Event::AlertAcknowledged(alert)
                    | Event::AlertAnnotated(alert)
                    | Event::AlertSuppressed(alert),
                ) => (alert, false),
                _ => continue,
            };
            let Ok(alert) = Alert::try_from(recorded) else {
                continue;
            };
            if seen.insert(alert.key.clone()) && !resolved {
                open.push(alert);
            }
        }
        match page.items.last() {
            Some(last) if page.items.len() == 1000 && read < RESTORE_ALERTS_EVENTS => before = Some(last.seq),
            _ => break,
        }
    }
    if read >= RESTORE_ALERTS_EVENTS {
        tracing::warn!(
            read,
            "Stopped reading alert events at start after {RESTORE_ALERTS_EVENTS}: older open alerts are not taken back."
        );
    }
    let monitor = state.monitor();
    for alert in open {
        if is_external(&alert.key) {
            monitor.external().restore(alert);
        } else {
            monitor.engine().restore(alert);
        }
    }
    Ok(())
}

/// Whether a key belongs to the engine of results judged elsewhere (keepalives by the server's
/// liveness rule, alerts from Alertmanager), which are hard at once.
fn is_external(key: &CheckKey) -> bool {
    key.check == KEEPALIVE || key.check.starts_with("alertmanager/")
}

/// Drops expired silences, each with a `silence.expired` event; the active ones.
async fn active_silences(state: &AppState) -> Result<Vec<alerts::Silence>, ApiError> {
    let now = state.now_ms();
    let expired: Vec<alerts::Silence> = {
        let mut silences = state.monitor().silences();
        let (expired, active) = std::mem::take(&mut *silences)
            .into_iter()
            .partition(|s| s.ends_ms <= now);
        *silences = active;
        expired
    };
    if !expired.is_empty() {
        let events = expired
            .iter()
            .map(|s| NewEvent {
                systems: s.system.iter().cloned().collect(),
                host: s.host.clone(),
                actor: Some("server".into()),
                ..NewEvent::of(
                    now,
                    &Event::SilenceExpired(endstate_events::SilenceId { id: s.id }),
                    format!("silence {} of {} expired: {}", s.id, s.author, s.reason),
                )
            })
            .collect();
        state.store().append_events(events).await?;
        state.written();
    }
    Ok(state.monitor().silences().clone())
}

/// The status of a result on the wire (0 ok, 1 warning, 2 critical, 3 unknown).
fn status_of(code: u8) -> Status {
    match code {
        0 => Status::Ok,
        1 => Status::Warning,
        2 => Status::Critical,
        _ => Status::Unknown,
    }
}

/// Feeds an agent's check results (already stored and acknowledged) to the engine, and writes
/// and sends what it decides.
pub(crate) async fn ingest(state: &AppState, host: &str, results: Vec<(i64, CheckResult)>) -> Result<(), ApiError> {
    let results = results
        .into_iter()
        .map(|(at, result)| {
            let system = result
                .name
                .split_once('/')
                .map_or(result.name.as_str(), |(s, _)| s)
                .to_owned();
            let target = if result.target.is_empty() {
                host.to_owned()
            } else {
                result.target.clone()
            };
            let observed = alerts::CheckResult {
                key: CheckKey {
                    check: result.name.clone(),
                    target,
                },
                host: host.to_owned(),
                system,
                status: status_of(result.status),
                message: result.output.lines().next().unwrap_or_default().to_owned(),
                at_ms: at,
            };
            (observed, result.perfdata)
        })
        .collect::<Vec<_>>();
    // The last status and performance data of each, for Prometheus to scrape and check gates.
    let metrics = state.metrics();
    let mut latest = Vec::with_capacity(results.len());
    for (result, perfdata) in &results {
        let mut values = Vec::new();
        let labels = crate::metrics::CheckLabels {
            check: result.key.check.clone(),
            target: result.key.target.clone(),
        };
        metrics
            .check_status
            .get_or_create(&labels)
            .set(i64::from(result.status.severity_code()));
        for datum in endstate_monitor::nagios::perfdata(perfdata).0 {
            values.push((datum.label.clone(), datum.value));
            let labels = crate::metrics::PerfLabels {
                check: labels.check.clone(),
                target: labels.target.clone(),
                label: datum.label,
                unit: datum.unit.unwrap_or_default(),
            };
            metrics.check_perfdata.get_or_create(&labels).set(datum.value);
        }
        latest.push((
            result.key.clone(),
            Latest {
                status: result.status,
                perfdata: values,
                at_ms: result.at_ms,
            },
        ));
    }
    state
        .monitor()
        .latest
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend(latest);
    process(state, Source::Agent(host), results).await
}

/// The check every host has: its agent's keepalives.
pub(crate) const KEEPALIVE: &str = "endstate/keepalive";

/// A host's keepalive as a check: critical when the server declared it unreachable, ok when it
/// is back. While its alert is open, the host is down: alerts about it are consequences.
pub(crate) async fn keepalive(
    state: &AppState,
    host: &str,
    reachable: bool,
    reason: &str,
    systems: &[String],
) -> Result<(), ApiError> {
    let result = alerts::CheckResult {
        key: CheckKey {
            check: KEEPALIVE.to_owned(),
            target: host.to_owned(),
        },
        host: host.to_owned(),
        system: systems.first().cloned().unwrap_or_else(|| "endstate".to_owned()),
        status: if reachable { Status::Ok } else { Status::Critical },
        message: reason.to_owned(),
        at_ms: state.now_ms(),
    };
    process(state, Source::Server, vec![(result, String::new())]).await
}

/// Where results come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// An agent: results of checks, soft before hard.
    Agent(&'a str),
    /// Alertmanager: every firing alert is already hard.
    Alertmanager,
    /// The server itself (keepalives): hard at once, the liveness rule already waited.
    Server,
}

/// Runs results through the engine of their source; writes and sends what it decides.
async fn process(
    state: &AppState,
    source: Source<'_>,
    results: Vec<(alerts::CheckResult, String)>,
) -> Result<(), ApiError> {
    if results.is_empty() {
        return Ok(());
    }
    let monitor = state.monitor();
    let silences = active_silences(state).await?;
    let host_labels: BTreeMap<String, BTreeMap<String, String>> = if silences.iter().any(|s| !s.labels.is_empty()) {
        state
            .store()
            .list_hosts()
            .await?
            .into_iter()
            .map(|h| (h.name.0, h.labels.into_iter().collect()))
            .collect()
    } else {
        BTreeMap::new()
    };
    // Hosts whose keepalive alert is open are down.
    let hosts_down: BTreeSet<String> = monitor
        .external()
        .alerts()
        .filter(|a| a.key.check == KEEPALIVE)
        .map(|a| a.key.target.clone())
        .collect();
    let systems_down = match source {
        Source::Agent(_) => dependencies_down(state).await,
        Source::Alertmanager | Source::Server => BTreeMap::new(),
    };
    let context = Context {
        silences: &silences,
        host_labels: &host_labels,
        hosts_down: &hosts_down,
        systems_down: &systems_down,
    };
    let mut effects = Vec::new();
    {
        let mut engine = match source {
            Source::Agent(_) => monitor.engine(),
            Source::Alertmanager | Source::Server => monitor.external(),
        };
        for (result, perfdata) in results {
            let (at, host) = (result.at_ms, result.host.clone());
            for effect in engine.observe(result, &context) {
                effects.push((at, host.clone(), effect, perfdata.clone()));
            }
        }
    }
    let actor = match source {
        Source::Agent(host) => format!("agent:{host}"),
        Source::Alertmanager => "alertmanager".to_owned(),
        Source::Server => "server".to_owned(),
    };
    let mut events = Vec::new();
    let mut notifications = Vec::new();
    for (at, host, effect, perfdata) in effects {
        if let Effect::Notify { alert, reason } = &effect {
            notifications.push((alert.clone(), reason.clone()));
        }
        if let Some(mut event) = event_of(&host, at, &effect, &perfdata) {
            event.actor = Some(actor.clone());
            if host.is_empty() {
                event.host = None;
            }
            events.push(event);
        }
    }
    if !events.is_empty() {
        state.store().append_events(events).await?;
        state.written();
    }
    // After the results are stored, so a notification's history includes the result that sent it.
    for (alert, reason) in notifications {
        notify(state, alert, reason);
    }
    Ok(())
}

/// Systems with a component that depends on a component of another system whose check is
/// critical (an open alert that is not itself a consequence), with why: their alerts are
/// consequences and do not page on their own. Empty when no such alert is open (the desired
/// state is not even read then).
async fn dependencies_down(state: &AppState) -> BTreeMap<String, String> {
    // Computed again only when an alert opened, changed or resolved, and at least every 5 s (a
    // new revision may declare other dependencies): every batch of results asks.
    let now = state.now_ms();
    let version = state.monitor().engine().version();
    {
        let cached = state
            .monitor()
            .dependencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.0 == version && now - cached.1 < 5_000 {
            return cached.2.clone();
        }
    }
    let down = compute_dependencies_down(state).await;
    *state
        .monitor()
        .dependencies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = (version, now, down.clone());
    down
}

async fn compute_dependencies_down(state: &AppState) -> BTreeMap<String, String> {
    // The failing components, each with one of its alerts.
    let failing: BTreeMap<String, (String, String)> = state
        .monitor()
        .engine()
        .alerts()
        .filter(|a| a.status == Status::Critical && a.consequence_of.is_none())
        .filter_map(|a| {
            Some((
                component_of(&a.key.target)?,
                (a.key.check.clone(), a.key.target.clone()),
            ))
        })
        .collect();
    if failing.is_empty() {
        return BTreeMap::new();
    }
    let Ok(Some((_, desired))) = state.latest_desired().await else {
        return BTreeMap::new();
    };
    let mut down = BTreeMap::new();
    for component in desired.components.values() {
        for dependency in &component.depends_on {
            let other_system = dependency.split_once('/').is_some_and(|(s, _)| s != component.system);
            if let (true, Some((check, target))) = (other_system, failing.get(dependency)) {
                down.entry(component.system.clone()).or_insert_with(|| {
                    format!(
                        "{} depends on {dependency}, whose check {check} on {target} is critical",
                        component.key()
                    )
                });
            }
        }
    }
    down
}

/// The component of an instance target (`shop/web#0@h1` is `shop/web`, as on instance events),
/// none for a host.
fn component_of(target: &str) -> Option<String> {
    let (component, _) = target.split_once('#')?;
    component.contains('/').then(|| component.to_owned())
}

fn event_of(host: &str, at: i64, effect: &Effect, perfdata: &str) -> Option<NewEvent> {
    let base = |key: &CheckKey, system: &str, event: &Event, summary: String| NewEvent {
        systems: vec![system.to_owned()],
        host: Some(host.to_owned()),
        component: component_of(&key.target),
        actor: Some(format!("agent:{host}")),
        ..NewEvent::of(at, event, summary)
    };
    let alert_event = |alert: &Alert, kind: fn(endstate_events::Alert) -> Event, what: String| {
        base(
            &alert.key,
            &alert.system,
            &kind(alert.into()),
            format!("alert {} on {}: {what}", alert.key.check, alert.key.target),
        )
    };
    Some(match effect {
        Effect::StatusChanged { key, from, to, message } => {
            let system = key.check.split_once('/').map_or(key.check.as_str(), |(s, _)| s);
            let from_word = from.map_or("none", |f| f.as_str());
            base(
                key,
                system,
                &Event::CheckStatus(endstate_events::CheckStatus {
                    check: key.check.clone(),
                    target: key.target.clone(),
                    from: from.map(|f| f.as_str().to_owned()),
                    to: to.as_str().to_owned(),
                    message: message.clone(),
                    perfdata: perfdata.to_owned(),
                }),
                format!(
                    "check {} on {}: {from_word} -> {}: {message}",
                    key.check,
                    key.target,
                    to.as_str()
                ),
            )
        }
        Effect::AlertOpened { alert } => alert_event(
            alert,
            Event::AlertOpened,
            format!("{}: {}", alert.status.as_str(), alert.message),
        ),
        Effect::AlertChanged { alert } => alert_event(
            alert,
            Event::AlertChanged,
            format!("{}: {}", alert.status.as_str(), alert.message),
        ),
        Effect::AlertResolved { alert } => {
            alert_event(alert, Event::AlertResolved, format!("resolved: {}", alert.message))
        }
        Effect::Suppressed { alert, reason } => {
            alert_event(alert, Event::AlertSuppressed, format!("not notified: {reason}"))
        }
        Effect::Notify { .. } => return None,
    })
}

/// What a notification is about, as its timeline events name it (also kept with a queued
/// delivery, so one sent again after a restart is recorded the same way).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Subject {
    system: String,
    host: String,
    check: String,
    target: String,
    reason: String,
}

impl Subject {
    fn of(alert: &Alert, reason: &str) -> Subject {
        Subject {
            system: alert.system.clone(),
            host: alert.host.clone(),
            check: alert.key.check.clone(),
            target: alert.key.target.clone(),
            reason: reason.to_owned(),
        }
    }

    fn key(&self) -> CheckKey {
        CheckKey {
            check: self.check.clone(),
            target: self.target.clone(),
        }
    }

    fn event(&self, now: i64, event: &Event, what: String) -> NewEvent {
        NewEvent {
            systems: vec![self.system.clone()],
            host: (!self.host.is_empty()).then(|| self.host.clone()),
            component: component_of(&self.target),
            actor: Some("server".into()),
            ..NewEvent::of(now, event, format!("alert {} on {}: {what}", self.check, self.target))
        }
    }
}

/// One notification to one URL. It is on the timeline (`alert.delivery_queued`, with its body)
/// before anything is sent, and its outcome after (`alert.notified` or `alert.ticket`, or their
/// `_failed`), both with its id: a delivery queued without an outcome is sent again when the
/// server starts, with the same id (at least once; receivers drop repeats by `endstate-delivery`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Delivery {
    id: String,
    url: String,
    /// The ticket webhook (its answer is the ticket's link), else an alert webhook.
    ticket: bool,
    subject: Subject,
    /// The notification's JSON, exactly as sent.
    body: String,
}

/// How long a queued delivery is sent again at start: older ones are left (the alert has moved on).
const REDELIVER_WITHIN_MS: i64 = 24 * 3_600_000;

impl Delivery {
    fn new(url: String, ticket: bool, subject: &Subject, body: &str) -> Delivery {
        let mut bytes = [0_u8; 12];
        let id = match getrandom::fill(&mut bytes) {
            Ok(()) => crate::auth::hex(&bytes),
            Err(_) => format!("{}-{}", crate::clock::system_now_ms(), url.len()),
        };
        Delivery {
            id: format!("d_{id}"),
            url,
            ticket,
            subject: subject.clone(),
            body: body.to_owned(),
        }
    }

    fn queued(&self, now: i64) -> NewEvent {
        self.subject.event(
            now,
            &Event::AlertDeliveryQueued(self.recorded()),
            format!("notification {} to {} queued", self.id, self.url),
        )
    }

    /// As `alert.delivery_queued` records it.
    fn recorded(&self) -> endstate_events::Delivery {
        let s = &self.subject;
        endstate_events::Delivery {
            id: self.id.clone(),
            url: self.url.clone(),
            ticket: self.ticket,
            subject: endstate_events::DeliverySubject {
                system: s.system.clone(),
                host: s.host.clone(),
                check: s.check.clone(),
                target: s.target.clone(),
                reason: s.reason.clone(),
            },
            body: self.body.clone(),
        }
    }

    /// From what `alert.delivery_queued` recorded.
    fn of_recorded(recorded: endstate_events::Delivery) -> Delivery {
        let s = recorded.subject;
        Delivery {
            id: recorded.id,
            url: recorded.url,
            ticket: recorded.ticket,
            subject: Subject {
                system: s.system,
                host: s.host,
                check: s.check,
                target: s.target,
                reason: s.reason,
            },
            body: recorded.body,
        }
    }
}

/// Sends a notification to every handler from a task of its own: each webhook (retried), each
/// command handler, and for an alert that opens, the ticket webhook; each outcome goes on the
/// timeline (`alert.notified`, `alert.notify_failed`, `alert.handled`, `alert.handler_failed`,
/// `alert.ticket`, `alert.ticket_failed`). Webhook and ticket calls are durable and signed (see
/// [`Delivery`] and [`signed_post`]).
fn notify(state: &AppState, alert: Alert, reason: String) {
    let config = &state.monitor().config;
    let ticket = config.ticket_webhook.clone().filter(|_| reason == "opened");
    if config.webhooks.is_empty() && config.commands.is_empty() && ticket.is_none() {
        return;
    }
    let (webhooks, commands) = (config.webhooks.clone(), config.commands.clone());
    let state = state.clone();
    tokio::spawn(async move {
        let history = history_label(&state, &alert, state.now_ms()).await.unwrap_or(None);
        let body = Notification {
            kind: "endstate.alert",
            reason: &reason,
            alert: &alert,
            history: history.clone(),
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        let subject = Subject::of(&alert, &reason);
        let deliveries: Vec<Delivery> = ticket
            .into_iter()
            .map(|url| Delivery::new(url, true, &subject, &body))
            .chain(
                webhooks
                    .into_iter()
                    .map(|url| Delivery::new(url, false, &subject, &body)),
            )
            .collect();
        // On the timeline before the first byte is sent: a server that dies from here on sends
        // them again when it starts.
        if !deliveries.is_empty()
            && let Err(error) = state
                .store()
                .append_events(
                    deliveries
                        .iter()
                        .map(|delivery| delivery.queued(state.now_ms()))
                        .collect(),
                )
                .await
        {
            tracing::warn!(error = %crate::chain(&error), "Could not queue the alert's notifications; sending them anyway.");
        }
        let mut events = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        for delivery in &deliveries {
            let (event, failure) = send(&state, delivery).await;
            failures.extend(failure);
            // Recorded at once: a server that stops later does not send this one again.
            if let Err(error) = state.store().append_events(vec![event]).await {
                tracing::warn!(error = %crate::chain(&error), "Could not record a notification's outcome.");
            }
        }
        for program in commands {
            let shown = program.display().to_string();
            let outcome = run_handler(&program, body.as_bytes(), &alert, &reason).await;
            if let Err((error, _)) = &outcome {
                failures.push(format!("{shown}: {error}"));
            }
            events.push(match outcome {
                Ok(output) => subject.event(
                    state.now_ms(),
                    &Event::AlertHandled(endstate_events::Handled {
                        command: shown.clone(),
                        reason: reason.clone(),
                        check: alert.key.check.clone(),
                        target: alert.key.target.clone(),
                        error: None,
                        output,
                    }),
                    format!("handler {shown} ran ({reason})"),
                ),
                Err((error, output)) => subject.event(
                    state.now_ms(),
                    &Event::AlertHandlerFailed(endstate_events::Handled {
                        command: shown.clone(),
                        reason: reason.clone(),
                        check: alert.key.check.clone(),
                        target: alert.key.target.clone(),
                        error: Some(error.clone()),
                        output,
                    }),
                    format!("handler {shown} failed ({reason}): {error}"),
                ),
            });
        }
        // On the alert too, while it is open: `endstate alerts` says nobody may have heard of it.
        let failed = (!failures.is_empty()).then(|| failures.join("; "));
        state.monitor().set_notify_failed(&alert.key, failed);
        if let Err(error) = state.store().append_events(events).await {
            tracing::warn!(error = %crate::chain(&error), "Could not record what the alert handlers did.");
        }
        state.written();
    });
}

/// Sends one delivery (retried) and returns its outcome event, and the failure if it failed.
async fn send(state: &AppState, delivery: &Delivery) -> (NewEvent, Option<String>) {
    let (subject, url, id) = (&delivery.subject, &delivery.url, &delivery.id);
    let monitor = state.monitor();
    let secret = monitor.config.webhook_secret.as_deref();
    if delivery.ticket {
        return match open_ticket(&monitor.client, url, id, secret, delivery.body.as_bytes()).await {
            Ok(link) => {
                let updated = monitor.set_ticket(&subject.key(), link.clone());
                (
                    subject.event(
                        state.now_ms(),
                        &Event::AlertTicket(endstate_events::Ticket {
                            url: url.clone(),
                            delivery: id.clone(),
                            ticket: link.clone(),
                            check: subject.check.clone(),
                            target: subject.target.clone(),
                            alert: updated.as_ref().map(Into::into),
                        }),
                        format!("ticket {link} opened through {url}"),
                    ),
                    None,
                )
            }
            Err(error) => (
                subject.event(
                    state.now_ms(),
                    &Event::AlertTicketFailed(endstate_events::TicketFailed {
                        url: url.clone(),
                        delivery: id.clone(),
                        error: error.to_string(),
                        check: subject.check.clone(),
                        target: subject.target.clone(),
                    }),
                    format!("could not open a ticket through {url}: {error}"),
                ),
                Some(format!("{url}: {error}")),
            ),
        };
    }
    let reason = &subject.reason;
    match deliver(&monitor.client, url, id, secret, delivery.body.as_bytes()).await {
        Ok(attempts) => (
            subject.event(
                state.now_ms(),
                &Event::AlertNotified(endstate_events::Notified {
                    url: url.clone(),
                    delivery: id.clone(),
                    reason: reason.clone(),
                    check: subject.check.clone(),
                    target: subject.target.clone(),
                    error: None,
                }),
                format!("notified {url} ({reason}) after {attempts} attempt(s)"),
            ),
            None,
        ),
        Err(error) => (
            subject.event(
                state.now_ms(),
                &Event::AlertNotifyFailed(endstate_events::Notified {
                    url: url.clone(),
                    delivery: id.clone(),
                    reason: reason.clone(),
                    check: subject.check.clone(),
                    target: subject.target.clone(),
                    error: Some(error.to_string()),
                }),
                format!("could not notify {url} ({reason}): {error}"),
            ),
            Some(format!("{url}: {error}")),
        ),
    }
}

/// How many queued deliveries (and as many outcomes) the start reads at most: a day of a
/// notification every second.
const MAX_RESUMED_EVENTS: usize = 100_000;

/// At start: sends again every delivery of the last day that was queued and has no outcome on
/// the timeline (the server stopped between queueing and recording), from a task of its own.
pub(crate) async fn resume_deliveries(state: &AppState) -> Result<usize, ApiError> {
    let since = state.now_ms() - REDELIVER_WITHIN_MS;
    // Every page of the day, newest first: an outcome left unread would send its delivery twice.
    let read = |kinds: &[&str]| {
        let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
        let store = state.store();
        async move {
            let mut all = Vec::new();
            let mut before = None;
            loop {
                let query = endstate_store::EventQuery {
                    kinds: Some(kinds.clone()),
                    since_ms: Some(since),
                    before,
                    limit: endstate_store::MAX_PAGE_LIMIT,
                    ..endstate_store::EventQuery::default()
                };
                let page = store.query_events(&query).await?;
                all.extend(page.items);
                match page.next {
                    Some(seq) if all.len() < MAX_RESUMED_EVENTS => before = Some(endstate_types::EventSeq(seq)),
                    _ => break Ok::<_, endstate_store::StoreError>(all),
                }
            }
        }
    };
    let queued = read(&["alert.delivery_queued"]).await?;
    if queued.is_empty() {
        return Ok(0);
    }
    let done: BTreeSet<String> = read(&[
        "alert.notified",
        "alert.notify_failed",
        "alert.ticket",
        "alert.ticket_failed",
    ])
    .await?
    .iter()
    .filter_map(|e| match e.typed()? {
        Event::AlertNotified(n) | Event::AlertNotifyFailed(n) => Some(n.delivery),
        Event::AlertTicket(t) => Some(t.delivery),
        Event::AlertTicketFailed(t) => Some(t.delivery),
        _ => None,
    })
    .collect();
    // Only to where notifications still go: a webhook the operator removed gets nothing more.
    let config = &state.monitor().config;
    let still_configured =
        |d: &Delivery| config.webhooks.contains(&d.url) || config.ticket_webhook.as_deref() == Some(d.url.as_str());
    let pending: Vec<Delivery> = queued
        .iter()
        .filter_map(|e| match e.typed()? {
            Event::AlertDeliveryQueued(recorded) => Some(Delivery::of_recorded(recorded)),
            _ => None,
        })
        .filter(|d| !done.contains(&d.id) && still_configured(d))
        .collect();
    let n = pending.len();
    if n > 0 {
        tracing::info!(
            deliveries = n,
            "Sending again the notifications a previous run queued but did not finish."
        );
        let state = state.clone();
        tokio::spawn(async move {
            for delivery in pending.iter().rev() {
                let (event, _) = send(&state, delivery).await;
                if let Err(error) = state.store().append_events(vec![event]).await {
                    tracing::warn!(error = %crate::chain(&error), "Could not record a notification sent again.");
                }
                state.written();
            }
        });
    }
    Ok(n)
}

/// Runs a command handler: the notification on its stdin, the alert in `ENDSTATE_ALERT_*`
/// variables, in a process group of its own, killed whole after [`HANDLER_TIMEOUT`]. Its output
/// (stdout then stderr, at most [`HANDLER_OUTPUT`] bytes) either way.
async fn run_handler(
    program: &std::path::Path,
    body: &[u8],
    alert: &Alert,
    reason: &str,
) -> Result<String, (String, String)> {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(program);
    command
        .env("ENDSTATE_ALERT_REASON", reason)
        .env("ENDSTATE_ALERT_CHECK", &alert.key.check)
        .env("ENDSTATE_ALERT_TARGET", &alert.key.target)
        .env("ENDSTATE_ALERT_HOST", &alert.host)
        .env("ENDSTATE_ALERT_SYSTEM", &alert.system)
        .env("ENDSTATE_ALERT_STATUS", alert.status.as_str())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|error| (format!("cannot start it: {error}"), String::new()))?;
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        // A handler that does not read its input is its business.
        let _ = stdin.write_all(body).await;
    }
    let finished = tokio::time::timeout(HANDLER_TIMEOUT, child.wait_with_output()).await;
    let Ok(finished) = finished else {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        return Err((
            format!("still running after {HANDLER_TIMEOUT:?}: its process group was killed"),
            String::new(),
        ));
    };
    let output = finished.map_err(|error| (format!("cannot wait for it: {error}"), String::new()))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if text.len() > HANDLER_OUTPUT {
        let mut cut = HANDLER_OUTPUT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" [truncated]");
    }
    match output.status.code() {
        Some(0) => Ok(text),
        Some(code) => Err((format!("exit code {code}"), text)),
        None => Err(("killed by a signal".to_owned(), text)),
    }
}

/// A webhook or ticket call: the JSON body, `endstate-delivery` (the same for every attempt and
/// every redelivery, so a receiver drops repeats), `endstate-timestamp` (unix seconds) and, with a
/// secret, `endstate-signature: sha256=HEX`, the HMAC-SHA256 of `DELIVERY.TIMESTAMP.BODY` (a
/// receiver checks it and refuses old timestamps, so a recorded call cannot be replayed later,
/// nor under another delivery id).
fn signed_post(
    client: &reqwest::Client,
    url: &str,
    delivery: &str,
    secret: Option<&[u8]>,
    body: &[u8],
    unix_s: i64,
) -> reqwest::RequestBuilder {
    let mut request = client
        .post(url)
        .timeout(Duration::from_secs(5))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("endstate-delivery", delivery)
        .header("endstate-timestamp", unix_s.to_string());
    if let Some(secret) = secret {
        request = request.header("endstate-signature", signature(secret, delivery, unix_s, body));
    }
    request.body(body.to_vec())
}

/// `sha256=` and the HMAC-SHA256 (hex) of `DELIVERY.TIMESTAMP.BODY` under `secret`.
pub(crate) fn signature(secret: &[u8], delivery: &str, unix_s: i64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut context = aws_lc_rs::hmac::Context::with_key(&key);
    context.update(delivery.as_bytes());
    context.update(b".");
    context.update(unix_s.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("sha256={}", crate::auth::hex(context.sign().as_ref()))
}

/// POSTs an alert that opened to the ticket webhook: the link its JSON answer gives.
async fn open_ticket(
    client: &reqwest::Client,
    url: &str,
    delivery: &str,
    secret: Option<&[u8]>,
    body: &[u8],
) -> Result<String, String> {
    let response = post_with_retries(client, url, delivery, secret, body).await?;
    let answer: serde_json::Value = response
        .json()
        .await
        .map_err(|error| format!("the answer is not JSON: {}", crate::chain(&error)))?;
    ["url", "link", "ticket_url"]
        .iter()
        .find_map(|field| answer.get(*field).and_then(serde_json::Value::as_str))
        .filter(|link| !link.is_empty() && link.len() <= 2048)
        .map(str::to_owned)
        .ok_or_else(|| "the answer has no url, link or ticket_url (at most 2 KiB)".to_owned())
}

/// POSTs one notification, retrying with backoff: the number of attempts, or the last error.
async fn deliver(
    client: &reqwest::Client,
    url: &str,
    delivery: &str,
    secret: Option<&[u8]>,
    body: &[u8],
) -> Result<u32, String> {
    post_with_retries(client, url, delivery, secret, body)
        .await
        .map(|response| response.extensions().get::<Attempts>().map_or(1, |a| a.0))
}

/// How many attempts a POST took.
#[derive(Clone, Copy)]
struct Attempts(u32);

/// POSTs JSON with backoff (0.5 s doubling, 5 attempts, each with the client's timeout): the
/// first successful response, or the last error.
async fn post_with_retries(
    client: &reqwest::Client,
    url: &str,
    delivery: &str,
    secret: Option<&[u8]>,
    body: &[u8],
) -> Result<reqwest::Response, String> {
    const ATTEMPTS: u32 = 5;
    let mut delay = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let request = signed_post(
            client,
            url,
            delivery,
            secret,
            body,
            crate::clock::system_now_ms() / 1000,
        );
        match request.send().await {
            Ok(mut response) if response.status().is_success() => {
                response.extensions_mut().insert(Attempts(attempt));
                return Ok(response);
            }
            Ok(response) => last = format!("HTTP {}", response.status()),
            Err(error) => last = crate::chain(&error),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Err(format!("{last} (after {ATTEMPTS} attempts)"))
}

/// The open alerts, by check and target: status, since when, how often it changed, whether it
/// flaps, who acknowledged it, the silence or the down host that keeps it quiet.
#[utoipa::path(get, path = "/v1/alerts",
    responses((status = 200, body = [AlertView])),
    security(("bearer" = [])))]
pub(crate) async fn list_alerts(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(actor): axum::Extension<crate::auth::Actor>,
) -> Result<axum::Json<Vec<AlertView>>, ApiError> {
    crate::auth::authorize(&actor, crate::auth::Verb::Read, None)?;
    let now = state.now_ms();
    let mut out = Vec::new();
    for alert in state.monitor().alerts() {
        let history = history_label(&state, &alert, now).await?;
        out.push(alert_view(&alert, history));
    }
    Ok(axum::Json(out))
}

/// "Always broken, or did it just happen?" for an alert: the history of its check on its host
/// over 30 days (`new` or `chronic`, since when it fails, its share failing over 7 days).
async fn history_label(state: &AppState, alert: &Alert, now: i64) -> Result<Option<AlertHistory>, ApiError> {
    let target = crate::history::Target::Check {
        check: alert.key.check.clone(),
        host: alert.host.clone(),
    };
    let (before, samples) = match crate::history::load_samples(state, &target, now).await {
        Ok(found) => found,
        // No result stored yet (an alert from Alertmanager), or too many to read at once (a
        // check flapping every second for a month): nothing to say, the alert is listed anyway.
        Err(ApiError::NotFound(_) | ApiError::Unavailable(_)) => return Ok(None),
        Err(error) => return Err(error),
    };
    let stats = crate::history::compute(now, before.as_ref(), &samples);
    let share_7d = stats
        .shares
        .iter()
        .find(|(window, _, _)| *window == "7d")
        .and_then(|(_, observed, failing)| crate::history::percent(*failing, *observed));
    Ok(Some(AlertHistory {
        label: if stats.failing { stats.label } else { "ok" }.to_owned(),
        failing_since: stats.failing_since_ms.map(crate::rfc3339),
        first_failed: stats.first_failed_ms.map(crate::rfc3339),
        failing_7d_percent: share_7d,
        flapping: stats.flapping,
    }))
}

/// Acknowledge an open alert: it stays open until its check is OK, and says who is on it.
#[utoipa::path(post, path = "/v1/alerts/ack", request_body = endstate_api::AckRequest,
    responses((status = 200, body = AlertView), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn ack(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(actor): axum::Extension<crate::auth::Actor>,
    crate::extract::JsonBody(request): crate::extract::JsonBody<endstate_api::AckRequest>,
) -> Result<axum::Json<AlertView>, ApiError> {
    let system = request
        .check
        .split_once('/')
        .map_or(request.check.as_str(), |(s, _)| s)
        .to_owned();
    crate::auth::authorize(&actor, crate::auth::Verb::Operate, Some(&system))?;
    let comment = request.comment.trim();
    if comment.is_empty() || comment.len() > 4096 {
        return Err(ApiError::bad_field(
            "comment",
            format!("is {} bytes; say what you are doing, in at most 4096", comment.len()),
        ));
    }
    let key = CheckKey {
        check: request.check.clone(),
        target: request.target.clone(),
    };
    let now = state.now_ms();
    let ack = alerts::Ack {
        author: actor.name.clone(),
        comment: comment.to_owned(),
        at_ms: now,
    };
    let alert = state.monitor().ack(&key, ack).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no open alert for check {} on {}",
            request.check, request.target
        ))
    })?;
    let event = NewEvent {
        systems: vec![alert.system.clone()],
        host: Some(alert.host.clone()),
        component: component_of(&alert.key.target),
        actor: Some(actor.name.clone()),
        ..NewEvent::of(
            now,
            &Event::AlertAcknowledged((&alert).into()),
            format!(
                "alert {} on {} acknowledged by {}: {comment}",
                alert.key.check, alert.key.target, actor.name
            ),
        )
    };
    state.store().append_events(vec![event]).await?;
    state.written();
    Ok(axum::Json(alert_view(&alert, None)))
}

/// Acknowledge or annotate every open alert that matches (by system, check, host, target; at
/// least one, or `all`), at once: each gets the comment and an `alert.acknowledged` or
/// `alert.annotated` event. Refused as a whole when one of them is of a system you may not
/// operate.
#[utoipa::path(post, path = "/v1/alerts/bulk", request_body = endstate_api::BulkAlerts,
    responses((status = 200, body = endstate_api::BulkAlertsView), (status = 400, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn bulk(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(actor): axum::Extension<crate::auth::Actor>,
    crate::extract::JsonBody(request): crate::extract::JsonBody<endstate_api::BulkAlerts>,
) -> Result<axum::Json<endstate_api::BulkAlertsView>, ApiError> {
    crate::auth::authorize(&actor, crate::auth::Verb::Read, None)?;
    let filtered =
        request.system.is_some() || request.check.is_some() || request.host.is_some() || request.target.is_some();
    if !filtered && !request.all {
        return Err(ApiError::bad_field(
            "all",
            "give at least one of system, check, host, target, or all: true to take every open alert",
        ));
    }
    if filtered && request.all {
        return Err(ApiError::bad_field("all", "all: true takes no filters"));
    }
    let comment = request.comment.trim();
    if comment.is_empty() || comment.len() > 4096 {
        return Err(ApiError::bad_field(
            "comment",
            format!("is {} bytes; say what you are doing, in at most 4096", comment.len()),
        ));
    }
    let matched: Vec<Alert> = state
        .monitor()
        .alerts()
        .into_iter()
        .filter(|a| {
            request.system.as_ref().is_none_or(|s| *s == a.system)
                && request.check.as_ref().is_none_or(|c| *c == a.key.check)
                && request.host.as_ref().is_none_or(|h| *h == a.host)
                && request.target.as_ref().is_none_or(|t| *t == a.key.target)
        })
        .collect();
    for system in matched.iter().map(|a| a.system.as_str()).collect::<BTreeSet<_>>() {
        crate::auth::authorize(&actor, crate::auth::Verb::Operate, Some(system))?;
    }
    let now = state.now_ms();
    let note = alerts::Ack {
        author: actor.name.clone(),
        comment: comment.to_owned(),
        at_ms: now,
    };
    let (kind, verb) = if request.acknowledge {
        (
            Event::AlertAcknowledged as fn(endstate_events::Alert) -> Event,
            "acknowledged",
        )
    } else {
        (
            Event::AlertAnnotated as fn(endstate_events::Alert) -> Event,
            "annotated",
        )
    };
    let mut done = Vec::new();
    let mut events = Vec::new();
    for alert in matched {
        let monitor = state.monitor();
        let updated = if request.acknowledge {
            monitor.ack(&alert.key, note.clone())
        } else {
            monitor.annotate(&alert.key, note.clone())
        };
        // Resolved in the meantime: nothing to do.
        let Some(updated) = updated else { continue };
        events.push(NewEvent {
            systems: vec![updated.system.clone()],
            host: (!updated.host.is_empty()).then(|| updated.host.clone()),
            component: component_of(&updated.key.target),
            actor: Some(actor.name.clone()),
            ..NewEvent::of(
                now,
                &kind((&updated).into()),
                format!(
                    "alert {} on {} {verb} by {}: {comment}",
                    updated.key.check, updated.key.target, actor.name
                ),
            )
        });
        done.push(updated);
    }
    if !events.is_empty() {
        state.store().append_events(events).await?;
        state.written();
    }
    Ok(axum::Json(endstate_api::BulkAlertsView {
        matched: done.len() as u64,
        alerts: done.iter().map(|a| alert_view(a, None)).collect(),
    }))
}

/// Keep matching alerts from notifying until a time: by system, check, host or host labels (at
/// least one). The silence is on the timeline, and so is every notification it holds back.
#[utoipa::path(post, path = "/v1/silences", request_body = endstate_api::CreateSilence,
    responses((status = 201, body = SilenceView), (status = 400, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn create_silence(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(actor): axum::Extension<crate::auth::Actor>,
    crate::extract::JsonBody(request): crate::extract::JsonBody<endstate_api::CreateSilence>,
) -> Result<(axum::http::StatusCode, axum::Json<SilenceView>), ApiError> {
    let system = request.system.clone().or_else(|| {
        request
            .check
            .as_ref()
            .and_then(|c| c.split_once('/').map(|(s, _)| s.to_owned()))
    });
    crate::auth::authorize(&actor, crate::auth::Verb::Operate, system.as_deref())?;
    let now = state.now_ms();
    if request.system.is_none() && request.check.is_none() && request.host.is_none() && request.labels.is_empty() {
        return Err(ApiError::bad_field(
            "system",
            "a silence needs at least one of system, check, host or labels (it would silence everything)",
        ));
    }
    if let Some(check) = &request.check
        && !check.contains('/')
    {
        return Err(ApiError::bad_field(
            "check",
            format!("found {check:?}; expected system/check"),
        ));
    }
    let reason = request.reason.trim();
    if reason.is_empty() || reason.len() > 4096 {
        return Err(ApiError::bad_field(
            "reason",
            format!("is {} bytes; say why, in at most 4096", reason.len()),
        ));
    }
    // RFC 3339, or a duration from now.
    let when = |field: &str, text: &str| -> Result<i64, ApiError> {
        match text.parse::<jiff::Timestamp>() {
            Ok(ts) => Ok(ts.as_millisecond()),
            Err(_) => match endstate_spec::Duration::parse(text) {
                Ok(ahead) => Ok(now.saturating_add(i64::try_from(ahead.as_std().as_millis()).unwrap_or(i64::MAX))),
                Err(why) => Err(ApiError::bad_field(
                    field,
                    format!("{text:?} is neither an RFC 3339 time nor a duration like 30m or 2h ({why})"),
                )),
            },
        }
    };
    let ends_ms = when("until", &request.until)?;
    let starts_ms = match &request.starts {
        // A start in the past is now: the silence holds from the moment it is made.
        Some(text) => when("starts", text)?.max(now),
        None => now,
    };
    if starts_ms >= ends_ms && ends_ms > now {
        return Err(ApiError::bad_field(
            "starts",
            format!(
                "{} is not before until ({}): a silence must start before it ends",
                request.starts.as_deref().unwrap_or_default(),
                request.until
            ),
        ));
    }
    if ends_ms <= now {
        return Err(ApiError::bad_field(
            "until",
            format!("{} is in the past: a silence must end after now", request.until),
        ));
    }
    if ends_ms - now > MAX_SILENCE_MS {
        return Err(ApiError::bad_field(
            "until",
            "is more than 30 days ahead; silence for less, and renew",
        ));
    }
    if active_silences(&state).await?.len() >= MAX_SILENCES {
        return Err(ApiError::Unavailable(format!(
            "{MAX_SILENCES} silences are active; remove some first"
        )));
    }
    let id = state.monitor().next_silence_id();
    let silence = alerts::Silence {
        id,
        system: request.system.clone(),
        check: request.check.clone(),
        host: request.host.clone(),
        labels: request.labels.clone(),
        starts_ms,
        ends_ms,
        reason: reason.to_owned(),
        author: actor.name.clone(),
    };
    let scope = [
        request.system.as_ref().map(|s| format!("system {s}")),
        request.check.as_ref().map(|c| format!("check {c}")),
        request.host.as_ref().map(|h| format!("host {h}")),
        (!request.labels.is_empty()).then(|| {
            let labels: Vec<String> = request.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("hosts with {}", labels.join(","))
        }),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    let until = jiff::Timestamp::from_millisecond(ends_ms)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let until = if starts_ms > now {
        let from = jiff::Timestamp::from_millisecond(starts_ms)
            .map(|t| t.to_string())
            .unwrap_or_default();
        format!("{until}, from {from}")
    } else {
        until
    };
    let event = NewEvent {
        systems: system.into_iter().collect(),
        host: request.host.clone(),
        actor: Some(actor.name.clone()),
        ..NewEvent::of(
            now,
            &Event::SilenceCreated((&silence).into()),
            format!("silence {id} by {} of {scope} until {until}: {reason}", actor.name),
        )
    };
    state.store().append_events(vec![event]).await?;
    state.monitor().silences().push(silence.clone());
    state.written();
    Ok((axum::http::StatusCode::CREATED, axum::Json(silence_view(&silence))))
}

/// The active silences.
#[utoipa::path(get, path = "/v1/silences", responses((status = 200, body = [SilenceView])), security(("bearer" = [])))]
pub(crate) async fn list_silences(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(actor): axum::Extension<crate::auth::Actor>,
) -> Result<axum::Json<Vec<SilenceView>>, ApiError> {
    crate::auth::authorize(&actor, crate::auth::Verb::Read, None)?;
    Ok(axum::Json(
        active_silences(&state).await?.iter().map(silence_view).collect(),
    ))
}

/// Ends a silence now.
#[utoipa::path(delete, path = "/v1/silences/{id}", params(("id" = u64, Path, description = "the silence")),
    responses((status = 200, body = SilenceView), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn remove_silence(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(actor): axum::Extension<crate::auth::Actor>,
    crate::extract::Segment(id): crate::extract::Segment,
) -> Result<axum::Json<SilenceView>, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_field("id", format!("found {id:?}; expected a silence number")))?;
    let found = state.monitor().silences().iter().find(|s| s.id == id).cloned();
    let silence = found.ok_or_else(|| ApiError::NotFound(format!("no active silence {id}")))?;
    crate::auth::authorize(&actor, crate::auth::Verb::Operate, silence.system.as_deref())?;
    state.monitor().silences().retain(|s| s.id != id);
    let event = NewEvent {
        systems: silence.system.iter().cloned().collect(),
        host: silence.host.clone(),
        actor: Some(actor.name.clone()),
        ..NewEvent::of(
            state.now_ms(),
            &Event::SilenceRemoved(endstate_events::SilenceId { id }),
            format!("silence {id} removed by {}", actor.name),
        )
    };
    state.store().append_events(vec![event]).await?;
    state.written();
    Ok(axum::Json(silence_view(&silence)))
}

/// Most alerts in one Alertmanager notification.
const MAX_EXTERNAL_ALERTS: usize = 1000;

/// An Alertmanager webhook receiver (the `webhook_config` payload, version 4): every alert of
/// the group becomes a result of the check `alertmanager/<alertname>` on its `instance` (else
/// its fingerprint): `firing` is critical (`warning` or `info` severity: warning), `resolved`
/// is ok. It is then an alert like any other: in `endstate alerts`, on the timeline of the
/// system its `system` (or `endstate_system`) label names, silenced and notified the same way.
/// Point Alertmanager at it with `http_config.authorization` carrying an endstate token.
#[utoipa::path(post, path = "/v1/alertmanager", request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn alertmanager(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(actor): axum::Extension<crate::auth::Actor>,
    crate::extract::JsonBody(body): crate::extract::JsonBody<serde_json::Value>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    crate::auth::authorize(&actor, crate::auth::Verb::Operate, None)?;
    let Some(list) = body.get("alerts").and_then(serde_json::Value::as_array) else {
        return Err(ApiError::bad_field(
            "alerts",
            "missing or not a list: expected Alertmanager's webhook payload (version 4)",
        ));
    };
    if list.len() > MAX_EXTERNAL_ALERTS {
        return Err(ApiError::bad_field(
            "alerts",
            format!("{} alerts; at most {MAX_EXTERNAL_ALERTS} per request", list.len()),
        ));
    }
    let now = state.now_ms();
    let mut results = Vec::with_capacity(list.len());
    for (i, alert) in list.iter().enumerate() {
        let field = |name: &str| -> Result<&str, ApiError> {
            alert.pointer(name).and_then(serde_json::Value::as_str).ok_or_else(|| {
                ApiError::bad_field(format!("alerts[{i}]{}", name.replace('/', ".")), "missing or not text")
            })
        };
        let name = field("/labels/alertname")?;
        let firing = match field("/status")? {
            "firing" => true,
            "resolved" => false,
            other => {
                return Err(ApiError::bad_field(
                    format!("alerts[{i}].status"),
                    format!("found {other:?}; expected firing or resolved"),
                ));
            }
        };
        let label = |key: &str| {
            alert
                .pointer(&format!("/labels/{key}"))
                .and_then(serde_json::Value::as_str)
        };
        let annotation = |key: &str| {
            alert
                .pointer(&format!("/annotations/{key}"))
                .and_then(serde_json::Value::as_str)
        };
        let target = label("instance")
            .or_else(|| alert.get("fingerprint").and_then(serde_json::Value::as_str))
            .unwrap_or("alertmanager")
            .to_owned();
        let system = label("system")
            .or_else(|| label("endstate_system"))
            .unwrap_or("alertmanager")
            .to_owned();
        let host = label("endstate_host").unwrap_or_default().to_owned();
        let status = match (firing, label("severity")) {
            (false, _) => Status::Ok,
            (true, Some("warning" | "info")) => Status::Warning,
            (true, _) => Status::Critical,
        };
        let message = annotation("summary")
            .or_else(|| annotation("description"))
            .unwrap_or(name)
            .to_owned();
        results.push((
            alerts::CheckResult {
                key: CheckKey {
                    check: format!("alertmanager/{name}"),
                    target,
                },
                host,
                system,
                status,
                message,
                at_ms: now,
            },
            String::new(),
        ));
    }
    let n = results.len();
    process(&state, Source::Alertmanager, results).await?;
    Ok(axum::Json(serde_json::json!({ "received": n })))
}

/// `GET /v1/review` parameters.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReviewParams {
    /// The period reported on: from this time (RFC 3339 or a duration back from now, default 7d).
    since: Option<String>,
    /// Only this system.
    system: Option<String>,
}

/// The review queue and the report of a period, across systems or for one.
#[utoipa::path(get, path = "/v1/review", params(ReviewParams), responses((status = 200, body = ReviewView)), security(("bearer" = [])))]
pub(crate) async fn review(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(actor): axum::Extension<crate::auth::Actor>,
    crate::extract::Params(params): crate::extract::Params<ReviewParams>,
) -> Result<axum::Json<ReviewView>, ApiError> {
    crate::auth::authorize(&actor, crate::auth::Verb::Read, params.system.as_deref())?;
    let now = state.now_ms();
    let since_ms = crate::extract::parse_time("since", params.since.as_deref().unwrap_or("7d"), now)?;
    if since_ms >= now {
        return Err(ApiError::bad_field("since", "is not in the past"));
    }
    if now - since_ms > 400 * 24 * 3600 * 1000 {
        return Err(ApiError::bad_field("since", "reaches back more than 400 days"));
    }
    let in_scope = |system: &str| params.system.as_deref().is_none_or(|s| s == system);
    let open: Vec<Alert> = state
        .monitor()
        .alerts()
        .into_iter()
        .filter(|a| in_scope(&a.system))
        .collect();
    let mut chronic = Vec::new();
    for alert in &open {
        let history = history_label(&state, alert, now).await?;
        if history.is_some_and(|h| h.label == "chronic") {
            chronic.push(alert.clone());
        }
    }
    let silences = active_silences(&state).await?;
    let expiring_silences: Vec<alerts::Silence> = silences
        .into_iter()
        .filter(|s| s.ends_ms - now <= 3600 * 1000)
        .filter(|s| s.system.as_deref().is_none_or(&in_scope))
        .collect();
    // What fired in the period, from the timeline.
    let mut fired: Vec<FiredAlert> = Vec::new();
    let mut open_index: BTreeMap<(String, String), usize> = BTreeMap::new();
    // `after` makes the store list oldest first: the order things happened in.
    let mut after = Some(endstate_types::EventSeq(0));
    for _page in 0..50 {
        let page = state
            .store()
            .query_events(&endstate_store::EventQuery {
                kinds: Some(vec![
                    "alert.opened".into(),
                    "alert.acknowledged".into(),
                    "alert.resolved".into(),
                ]),
                systems: params.system.clone().map(|s| vec![s]),
                since_ms: Some(since_ms),
                after,
                limit: 1000,
                ..endstate_store::EventQuery::default()
            })
            .await?;
        for event in &page.items {
            let (alert, opened, acknowledged) = match event.typed() {
                Some(Event::AlertOpened(alert)) => (alert, true, false),
                Some(Event::AlertAcknowledged(alert)) => (alert, false, true),
                Some(Event::AlertResolved(alert)) => (alert, false, false),
                _ => continue,
            };
            let key = (alert.key.check.clone(), alert.key.target.clone());
            match (opened, acknowledged) {
                (true, _) => {
                    open_index.insert(key, fired.len());
                    fired.push(FiredAlert {
                        check: alert.key.check.clone(),
                        target: alert.key.target.clone(),
                        system: alert.system.clone(),
                        status: alert.status.clone(),
                        message: alert.message.clone(),
                        opened_ms: alert.opened_ms,
                        acknowledged_by: None,
                        to_ack_ms: None,
                        to_resolve_ms: None,
                    });
                }
                (false, true) => {
                    if let Some(entry) = open_index.get(&key).and_then(|i| fired.get_mut(*i))
                        && entry.to_ack_ms.is_none()
                    {
                        entry.to_ack_ms = Some(event.time_ms - entry.opened_ms);
                        entry.acknowledged_by = alert.acked.map(|a| a.author);
                    }
                }
                _ => {
                    if let Some(i) = open_index.remove(&key)
                        && let Some(entry) = fired.get_mut(i)
                    {
                        entry.to_resolve_ms = Some(event.time_ms - entry.opened_ms);
                    }
                }
            }
        }
        match page.items.last() {
            Some(last) if page.items.len() == 1000 => after = Some(last.seq),
            _ => break,
        }
    }
    let median = |mut values: Vec<i64>| -> Option<i64> {
        values.sort_unstable();
        values.get(values.len() / 2).copied()
    };
    let summary = endstate_api::ReviewSummary {
        opened: fired.len() as u64,
        acknowledged: fired.iter().filter(|f| f.to_ack_ms.is_some()).count() as u64,
        resolved: fired.iter().filter(|f| f.to_resolve_ms.is_some()).count() as u64,
        median_to_ack_ms: median(fired.iter().filter_map(|f| f.to_ack_ms).collect()),
        median_to_resolve_ms: median(fired.iter().filter_map(|f| f.to_resolve_ms).collect()),
    };
    let views = |alerts: &mut dyn Iterator<Item = &Alert>| alerts.map(|a| alert_view(a, None)).collect();
    Ok(axum::Json(ReviewView {
        since_ms,
        until_ms: now,
        unacknowledged: views(
            &mut open
                .iter()
                .filter(|a| a.acked.is_none() && a.silenced_by.is_none() && a.consequence_of.is_none()),
        ),
        chronic: views(&mut chronic.iter()),
        flapping: views(&mut open.iter().filter(|a| a.flapping)),
        silenced: views(&mut open.iter().filter(|a| a.silenced_by.is_some())),
        expiring_silences: expiring_silences.iter().map(silence_view).collect(),
        fired,
        summary,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn alert() -> Alert {
        Alert {
            key: CheckKey {
                check: "shop/http".into(),
                target: "shop/web#0@h1".into(),
            },
            system: "shop".into(),
            host: "h1".into(),
            status: Status::Critical,
            message: "down".into(),
            opened_ms: 1,
            last_change_ms: 1,
            transitions: 0,
            flapping: false,
            acked: None,
            ticket: None,
            notify_failed: None,
            notes: Vec::new(),
            silenced_by: None,
            consequence_of: None,
            resolved_ms: None,
        }
    }

    #[test]
    fn a_check_gate_counts_fresh_failing_instances_or_reads_the_largest_perfdata() {
        let monitor = Monitor::new(MonitorConfig::default(), reqwest::Client::new());
        let result = |target: &str, status: Status, time: f64, at_ms: i64| {
            (
                CheckKey {
                    check: "shop/http".into(),
                    target: target.into(),
                },
                Latest {
                    status,
                    perfdata: vec![("time".into(), time)],
                    at_ms,
                },
            )
        };
        // The engine counts the failures in a row: `times` critical results of a target.
        let fail = |target: &str, times: u32| {
            let (silences, labels, down, systems) = (Vec::new(), BTreeMap::new(), BTreeSet::new(), BTreeMap::new());
            let context = Context {
                silences: &silences,
                host_labels: &labels,
                hosts_down: &down,
                systems_down: &systems,
            };
            for at_ms in 0..i64::from(times) {
                let result = alerts::CheckResult {
                    key: CheckKey {
                        check: "shop/http".into(),
                        target: target.into(),
                    },
                    host: "h".into(),
                    system: "shop".into(),
                    status: Status::Critical,
                    message: "down".into(),
                    at_ms,
                };
                monitor.engine().observe(result, &context);
            }
        };
        monitor.latest.lock().unwrap().extend([
            result("shop/web#0@h1", Status::Critical, 0.9, 1_000),
            result("shop/web#1@h2", Status::Ok, 0.2, 1_000),
            // Stale: an instance gone long ago.
            result("shop/web#2@h3", Status::Critical, 5.0, 1),
            // Another component with the same prefix.
            result("shop/webhook#0@h1", Status::Critical, 7.0, 1_000),
            // One failed result alone is soft: not counted.
            result("shop/web#3@h4", Status::Critical, 0.1, 1_000),
        ]);
        for target in ["shop/web#0@h1", "shop/web#2@h3", "shop/webhook#0@h1"] {
            fail(target, 2);
        }
        fail("shop/web#3@h4", 1);
        let (value, source) = monitor.check_gate("shop/http", "shop/web", None, 2_000, 1_500);
        assert_eq!(value, Ok(1.0));
        assert_eq!(
            source,
            "check shop/http: 1 of 3 instance(s) of shop/web not OK (shop/web#0@h1 critical 2 times in a row)"
        );
        let (value, source) = monitor.check_gate("shop/http", "shop/web", Some("time"), 2_000, 1_500);
        assert_eq!(value, Ok(0.9));
        assert!(
            source.contains("the largest of 3 instance(s) of shop/web (shop/web#0@h1)"),
            "{source}"
        );
        let (value, _) = monitor.check_gate("shop/http", "shop/web", Some("size"), 2_000, 1_500);
        assert!(value.unwrap_err().contains("has performance data `size`"));
        let (value, _) = monitor.check_gate("shop/http", "shop/web", None, 60_000, 1_500);
        assert_eq!(
            value,
            Err("no result of check shop/http on an instance of shop/web in the last 1s".to_owned())
        );
    }

    /// A receiver that answers 503 to its first `failures` requests, then 200; how many it got.
    async fn flaky_receiver(failures: u32) -> (String, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let mut buf = vec![0; 64 * 1024];
                let _ = stream.read(&mut buf).await;
                let status = if n <= failures {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = stream
                    .write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        (url, seen)
    }

    /// A webhook over HTTPS reaches a receiver whose CA the server trusts (`--trust-ca`), signed:
    /// its delivery id, timestamp and HMAC-SHA256 of `TIMESTAMP.BODY` under the secret. One whose
    /// certificate nobody vouches for is refused, and the error says so.
    #[tokio::test]
    async fn an_https_webhook_is_signed_and_needs_a_trusted_certificate() {
        use endstate_testkit::{HttpsServer, TestCa};
        let ca = TestCa::new("receiver CA");
        let receiver = HttpsServer::start(ca.current(), 200, b"{}").await;
        let url = format!("{}/hook", receiver.url);
        let body = serde_json::to_vec(&alert()).unwrap();
        let secret = b"a webhook secret".as_slice();
        let trusting = crate::http_client(std::slice::from_ref(&ca.der)).unwrap();
        assert_eq!(deliver(&trusting, &url, "d_1", Some(secret), &body).await, Ok(1));
        let received = receiver.requests();
        assert_eq!(received.len(), 1);
        let request = &received[0];
        assert!(request.line.starts_with("POST /hook "), "{request:?}");
        assert_eq!(request.body, body);
        assert_eq!(request.header("endstate-delivery"), Some("d_1"));
        let timestamp: i64 = request.header("endstate-timestamp").unwrap().parse().unwrap();
        assert!(
            (timestamp - crate::clock::system_now_ms() / 1000).abs() < 60,
            "{timestamp}"
        );
        let expected = signature(secret, "d_1", timestamp, &body);
        assert_eq!(request.header("endstate-signature"), Some(expected.as_str()));
        // What a receiver checks: another secret, delivery id, time or body gives another signature.
        assert_ne!(signature(b"another secret", "d_1", timestamp, &body), expected);
        assert_ne!(signature(secret, "d_2", timestamp, &body), expected);
        assert_ne!(signature(secret, "d_1", timestamp + 1, &body), expected);
        assert_ne!(signature(secret, "d_1", timestamp, b"{}"), expected);

        assert_eq!(expected.len(), "sha256=".len() + 64);

        let untrusting = crate::http_client(&[]).unwrap();
        let refused = deliver(&untrusting, &url, "d_2", Some(secret), &body)
            .await
            .unwrap_err();
        assert!(refused.contains("UnknownIssuer"), "{refused}");
        assert_eq!(
            receiver.requests().len(),
            1,
            "nothing was sent to an untrusted receiver"
        );
    }

    #[tokio::test]
    async fn a_failing_webhook_is_retried_and_a_dead_one_gives_up_saying_why() {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let (url, seen) = flaky_receiver(2).await;
        assert_eq!(
            deliver(&client, &url, "d_t", None, &serde_json::to_vec(&alert()).unwrap()).await,
            Ok(3)
        );
        assert_eq!(seen.load(Ordering::SeqCst), 3);

        // Nothing listens: every attempt fails, and the error says so.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", closed.local_addr().unwrap());
        drop(closed);
        let error = deliver(&client, &url, "d_t", None, &serde_json::to_vec(&alert()).unwrap())
            .await
            .unwrap_err();
        assert!(error.ends_with("(after 5 attempts)"), "{error}");
    }
}
