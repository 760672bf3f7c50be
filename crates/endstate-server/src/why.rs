//! "What changed right before?": the changes, actions, host events, configuration revisions and
//! notes that touched a target's system, its subsystems or its hosts in the window before the
//! target's state changed, ranked by closeness in time and in topology.
//!
//! [`rank`] is pure (the caller gives the scope, the moment and the events), so the ranking is
//! tested on synthetic events:
//!
//! - Closeness in time halves every [`HALF_LIFE_MS`] before the moment.
//! - Closeness in topology is the nearest relation of the event to the target: its host or its
//!   component (1.0), its system (0.8), one of its subsystems (0.6), another host of its system
//!   (0.5), anything else in scope (0.3).
//! - Kinds weigh: a change or a configuration revision 1.0, an action 0.9, a host event 0.8, a
//!   note 0.6.
//! - Events of one change or one action run are one suspect: the newest of them before the
//!   moment, with how many there were. A change that had ended before the moment (converged,
//!   rolled back, failed, aborted, superseded) weighs half of one still in progress then.

use std::collections::{BTreeMap, BTreeSet};

use axum::Extension;
use axum::Json;
use axum::extract::State;
use endstate_api::{Suspect, WhyView};
use endstate_store::{Event, EventQuery, InstanceFilter};
use endstate_types::{EventSeq, HostName};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::{Params, parse_time};
use crate::history::{self, Health, TARGET_SYNTAX, Target};
use crate::{AppState, rfc3339};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
/// Closeness in time halves every this long.
pub(crate) const HALF_LIFE_MS: i64 = 15 * MINUTE_MS;
/// The window looked at when none is given.
const DEFAULT_WINDOW_MS: i64 = 60 * MINUTE_MS;
/// The longest window.
const MAX_WINDOW_MS: i64 = 30 * DAY_MS;
/// The most events read from the systems' timeline (newest first); older ones are left out.
const MAX_EVENTS: usize = 5_000;
/// The most hosts whose own events are read (a system on more hosts: only its systems' events).
const MAX_HOSTS: usize = 20;
/// The kinds that may explain a change of state.
const KINDS: [&str; 6] = ["revision.", "change.", "action.", "host.", "agent.", "note."];
/// The kinds read for each host of the target (the others come with its systems).
const HOST_KINDS: [&str; 2] = ["host.", "agent."];

/// The kinds that end a change.
const ENDED: [&str; 5] = [
    "change.converged",
    "change.rolled_back",
    "change.failed",
    "change.aborted",
    "change.superseded",
];

/// What the target is, as the ranking sees it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scope {
    /// The target's host, if it has one.
    pub(crate) host: Option<String>,
    /// The target's component (`system/component`), if it has one.
    pub(crate) component: Option<String>,
    /// The target's own systems (for a host: those it runs).
    pub(crate) systems: BTreeSet<String>,
    /// Their subsystems (not the systems themselves).
    pub(crate) subsystems: BTreeSet<String>,
    /// Other hosts of the target's systems.
    pub(crate) other_hosts: BTreeSet<String>,
}

/// How close an event is to the target, with the words for it.
fn relation(scope: &Scope, event: &Event) -> (f64, String) {
    if let (Some(host), Some(on)) = (&scope.host, &event.host)
        && host == on
    {
        return (1.0, format!("on {host}, the target's host"));
    }
    if let (Some(component), Some(on)) = (&scope.component, &event.component)
        && component == on
    {
        return (1.0, format!("on {component}, the target's component"));
    }
    if let Some(system) = event.systems.iter().find(|s| scope.systems.contains(*s)) {
        return (0.8, format!("on {system}, the target's system"));
    }
    if let Some(system) = event.systems.iter().find(|s| scope.subsystems.contains(*s)) {
        return (0.6, format!("on {system}, a subsystem"));
    }
    if let Some(host) = event.host.as_ref().filter(|h| scope.other_hosts.contains(*h)) {
        return (0.5, format!("on {host}, another host of the system"));
    }
    (0.3, "elsewhere in scope".to_string())
}

/// The category and weight of a kind; `None` for kinds that explain nothing.
fn category(kind: &str) -> Option<(&'static str, f64)> {
    let prefix = kind.split('.').next().unwrap_or_default();
    Some(match prefix {
        "change" => ("change", 1.0),
        "revision" => ("revision", 1.0),
        "action" => ("action", 0.9),
        "host" | "agent" => ("host", 0.8),
        "note" => ("note", 0.6),
        _ => return None,
    })
}

/// A duration for people: `45s`, `12m`, `3h05m`, `2d04h`.
pub(crate) fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Ranks `events` (any order, duplicates allowed) as explanations of what happened at `at_ms`.
/// Events after `at_ms` or of other kinds are not suspects.
#[allow(clippy::cast_precision_loss)]
/// The run an event of a run names (only `action.*` events are parsed: ranking reads thousands).
fn run_of(event: &Event) -> Option<String> {
    if !event.kind.starts_with("action.") {
        return None;
    }
    crate::actions::run_of(&event.typed()?).map(str::to_owned)
}

pub(crate) fn rank(scope: &Scope, at_ms: i64, events: &[Event]) -> Vec<Suspect> {
    // The newest event of each group (a change, a run, or the event itself) and the group's size.
    let mut groups: BTreeMap<String, (&Event, u32)> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for event in events {
        if event.time_ms > at_ms || category(&event.kind).is_none() || !seen.insert(event.seq) {
            continue;
        }
        let key = match (event.change, run_of(event)) {
            (Some(change), _) => format!("change {}", change.0),
            (None, Some(run)) => format!("run {run}"),
            _ => format!("event {}", event.seq.0),
        };
        let entry = groups.entry(key).or_insert((event, 0));
        entry.1 += 1;
        if (event.time_ms, event.seq) > (entry.0.time_ms, entry.0.seq) {
            entry.0 = event;
        }
    }
    let mut suspects: Vec<Suspect> = groups
        .into_values()
        .filter_map(|(event, n)| {
            let (category, weight) = category(&event.kind)?;
            let before_ms = at_ms - event.time_ms;
            let time = 0.5f64.powf(before_ms as f64 / HALF_LIFE_MS as f64);
            let (topology, where_) = relation(scope, event);
            // A change that had ended before the moment weighs half of one still in progress.
            let ended = event.change.is_some() && ENDED.contains(&event.kind.as_str());
            let weight = if ended { weight * 0.5 } else { weight };
            let score = (100.0 * time * topology * weight * 10.0).round() / 10.0;
            let what = match (category, event.change) {
                ("change", Some(change)) | ("revision", Some(change)) if ended => {
                    format!("change {}, ended before", change.0)
                }
                ("change", Some(change)) | ("revision", Some(change)) => {
                    format!("change {}, in progress then", change.0)
                }
                ("revision", None) => "a configuration revision".to_string(),
                ("action", _) => {
                    run_of(event).map_or_else(|| "an action".to_string(), |run| format!("action run {run}"))
                }
                ("host", _) => "a host event".to_string(),
                ("note", _) => format!("a note by {}", event.actor.as_deref().unwrap_or("somebody")),
                _ => category.to_string(),
            };
            let events = if n > 1 {
                format!(" ({n} events, newest {})", event.kind)
            } else {
                format!(" ({})", event.kind)
            };
            Some(Suspect {
                rank: 0,
                score,
                category: category.to_string(),
                time: rfc3339(event.time_ms),
                before_s: u64::try_from(before_ms / 1000).unwrap_or(0),
                kind: event.kind.clone(),
                summary: event.summary.clone(),
                reason: format!("{what}{events}, {} before, {where_}", ago(before_ms)),
                seq: event.seq.0,
                change: event.change.map(|c| c.0),
                run: run_of(event),
                events: n,
            })
        })
        .collect();
    suspects.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.seq.cmp(&a.seq)));
    for (idx, suspect) in suspects.iter_mut().enumerate() {
        suspect.rank = u32::try_from(idx + 1).unwrap_or(u32::MAX);
    }
    suspects
}

/// A target of `why`: what `history` takes, or a system.
enum WhyTarget {
    Known(Target),
    System(String),
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct WhyParams {
    /// `host:NAME`, an instance `system/component#slot@host`, a check `check:system/check@host`,
    /// or a system `system:NAME` (or just its name).
    #[param(
        required = true,
        pattern = r"^(host:[a-z0-9][a-z0-9._-]{0,62}|[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}#[0-9]{1,9}@[a-z0-9][a-z0-9._-]{0,62}|check:[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}@[a-z0-9][a-z0-9._-]{0,62}|system:[a-z0-9][a-z0-9._-]{0,62}|[a-z0-9][a-z0-9._-]{0,62})$"
    )]
    target: Option<String>,
    /// The moment to explain: an RFC 3339 time or a duration ago (`90m`). Default: when the
    /// target's state last changed (for a failing target, when it started failing).
    at: Option<String>,
    /// How far back before `at` to look: a duration up to 30 days. Default 1 hour.
    window: Option<String>,
    /// At most this many suspects (default 20, at most 200).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// What changed right before a target's state changed: the changes, actions, host events,
/// configuration revisions and notes of its system, its subsystems and its hosts in the window
/// before, ranked by closeness in time and in topology, each with the reason it is listed.
#[utoipa::path(get, path = "/v1/why", params(WhyParams),
    responses((status = 200, body = WhyView), (status = 400, body = endstate_api::Problem), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn why(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<WhyParams>,
) -> Result<Json<WhyView>, ApiError> {
    let text = params
        .target
        .ok_or_else(|| ApiError::bad_field("target", format!("is required: {TARGET_SYNTAX}, or system:NAME")))?;
    let text = text.trim();
    let target = if let Some(system) = text.strip_prefix("system:") {
        WhyTarget::System(system.to_string())
    } else if endstate_types::validate_name(text).is_ok() {
        WhyTarget::System(text.to_string())
    } else {
        WhyTarget::Known(
            Target::parse(text)
                .map_err(|message| ApiError::bad_field("target", format!("{message}, or system:NAME")))?,
        )
    };
    let limit = match params.limit {
        None => 20,
        Some(n @ 1..=200) => n as usize,
        Some(n) => return Err(ApiError::bad_field("limit", format!("{n} is not between 1 and 200"))),
    };
    let now = state.now_ms();
    let window_ms = match params.window.as_deref() {
        None => DEFAULT_WINDOW_MS,
        Some(text) => {
            let window = endstate_spec::Duration::parse(text).map_err(|reason| {
                ApiError::bad_field(
                    "window",
                    format!("{text:?} is not a duration like 30m, 2h or 7d ({reason})"),
                )
            })?;
            let ms = i64::try_from(window.as_std().as_millis()).unwrap_or(i64::MAX);
            if ms == 0 || ms > MAX_WINDOW_MS {
                return Err(ApiError::bad_field(
                    "window",
                    format!("{text:?} is not between 1s and 30d"),
                ));
            }
            ms
        }
    };
    let given_at = params.at.as_deref().map(|t| parse_time("at", t, now)).transpose()?;
    if let Some(at) = given_at
        && at > now
    {
        return Err(ApiError::bad_field("at", format!("{} is in the future", rfc3339(at))));
    }

    let desired = state.latest_desired().await?.map(|(_, d)| d);
    let closure = |system: &str| -> Vec<String> {
        match &desired {
            Some(d) => d.subsystems_closure(system),
            None => vec![system.to_string()],
        }
    };
    let mut scope = Scope::default();
    let (display, kind) = match &target {
        WhyTarget::Known(t) => (t.display(), t.kind()),
        WhyTarget::System(name) => (format!("system:{name}"), "system"),
    };
    match &target {
        WhyTarget::Known(t) => {
            authorize(&actor, Verb::Read, t.system())?;
            scope.host = Some(t.host().to_string());
            if let Target::Instance { component, .. } = t {
                scope.component = Some(component.clone());
            }
            let own: Vec<String> = match t.system() {
                Some(system) => vec![system.to_string()],
                None => state
                    .store()
                    .list_instances(InstanceFilter {
                        system: None,
                        host: Some(HostName(t.host().to_string())),
                    })
                    .await?
                    .into_iter()
                    .map(|i| i.system)
                    .collect(),
            };
            for system in own {
                scope.subsystems.extend(closure(&system));
                scope.systems.insert(system);
            }
        }
        WhyTarget::System(name) => {
            authorize(&actor, Verb::Read, Some(name))?;
            let declared = desired.as_ref().is_some_and(|d| d.systems.contains_key(name));
            if !declared {
                return Err(ApiError::NotFound(format!(
                    "system {name:?} is not in the latest revision; `endstate why` explains declared systems, hosts, instances and checks"
                )));
            }
            scope.subsystems.extend(closure(name));
            scope.systems.insert(name.clone());
        }
    }
    scope.subsystems.retain(|s| !scope.systems.contains(s));
    // The other hosts of the target's systems, from the instances placed there.
    let instances = state
        .store()
        .list_instances(InstanceFilter {
            system: Some(scope.systems.iter().chain(scope.subsystems.iter()).cloned().collect()),
            host: None,
        })
        .await?;
    scope.other_hosts.extend(instances.into_iter().map(|i| i.host.0));
    if let Some(host) = &scope.host {
        scope.other_hosts.remove(host);
    }

    // The moment.
    let (at, at_reason) = match (&target, given_at) {
        (_, Some(at)) => (at, "as given".to_string()),
        (WhyTarget::Known(t), None) => {
            let (before, samples) = history::load_samples(&state, t, now).await?;
            moment(before.as_ref(), &samples, now)
        }
        (WhyTarget::System(_), None) => system_moment(&state, &scope, now).await?,
    };
    let since = at - window_ms;

    // The candidates: the systems' events, then each host's own (host events may name no system).
    let systems: Vec<String> = scope.systems.iter().chain(scope.subsystems.iter()).cloned().collect();
    let kinds: Vec<String> = KINDS.iter().map(|k| (*k).to_string()).collect();
    let mut events = Vec::new();
    let mut truncated = false;
    let base = EventQuery {
        kinds: Some(kinds),
        since_ms: Some(since),
        until_ms: Some(at + 1),
        limit: 1000,
        ..EventQuery::default()
    };
    truncated |= read_newest(
        &state,
        EventQuery {
            systems: Some(systems.clone()),
            ..base.clone()
        },
        &mut events,
    )
    .await?;
    // Events of the hosts themselves (enrolment, reachability, facts): they may name no system.
    // One kind prefix per query, so the store reads them by host and kind, not every event of
    // a busy host.
    let hosts: Vec<String> = scope.host.iter().chain(scope.other_hosts.iter()).cloned().collect();
    for host in hosts.iter().take(MAX_HOSTS) {
        for kind in HOST_KINDS {
            truncated |= read_newest(
                &state,
                EventQuery {
                    host: Some(host.clone()),
                    kinds: Some(vec![kind.to_string()]),
                    ..base.clone()
                },
                &mut events,
            )
            .await?;
        }
    }
    let considered = events.len() as u64;
    let mut suspects = rank(&scope, at, &events);
    suspects.truncate(limit);
    Ok(Json(WhyView {
        target: display,
        kind: kind.to_string(),
        at: rfc3339(at),
        at_reason,
        since: rfc3339(since),
        systems,
        hosts,
        suspects,
        considered,
        truncated,
    }))
}

/// Reads the newest events of `query` (at most [`MAX_EVENTS`]) into `out`; true when there were more.
async fn read_newest(state: &AppState, mut query: EventQuery, out: &mut Vec<Event>) -> Result<bool, ApiError> {
    let mut n = 0usize;
    loop {
        let page = state.store().query_events(&query).await?;
        n += page.items.len();
        out.extend(page.items);
        match page.next {
            Some(next) if n < MAX_EVENTS => query.before = Some(EventSeq(next)),
            Some(_) => return Ok(true),
            None => return Ok(false),
        }
    }
}

/// When a host, instance or check changed state: the start of its current failure; else the
/// start of its latest failure in the last 30 days (what a person woken by it asks about, even
/// once it recovered); else its last change of state; now, when it has none in 30 days.
fn moment(before: Option<&history::Sample>, samples: &[history::Sample], now: i64) -> (i64, String) {
    let stats = history::compute(now, before, samples);
    if let Some(since) = stats.failing_since_ms {
        return (since, format!("when it turned {} (failing since then)", stats.current));
    }
    // Classes: failing, healthy, or neither (starting, unknown).
    let class = |h: Health| match h {
        Health::Failing => 2,
        Health::Healthy => 1,
        Health::Neutral | Health::Unknown => 0,
    };
    let mut last_failure = None;
    let mut last_change = None;
    let mut previous = before.map(|s| class(s.health));
    for sample in samples {
        let now_class = class(sample.health);
        if previous != Some(now_class) {
            last_change = Some(sample);
            if now_class == 2 {
                last_failure = Some(sample);
            }
        }
        previous = Some(now_class);
    }
    if let Some(sample) = last_failure {
        return (
            sample.time_ms,
            format!("when it last turned {} (it has recovered since)", sample.state),
        );
    }
    match last_change {
        Some(sample) => (
            sample.time_ms,
            format!("when it last changed state, to {}", sample.state),
        ),
        None => (now, "now: its state did not change in the last 30 days".to_string()),
    }
}

/// When a system last turned bad: the newest alert opened, host lost or instance turning degraded
/// or unhealthy in its subtree over the last 30 days; now, when there is none.
async fn system_moment(state: &AppState, scope: &Scope, now: i64) -> Result<(i64, String), ApiError> {
    let systems: Vec<String> = scope.systems.iter().chain(scope.subsystems.iter()).cloned().collect();
    let mut query = EventQuery {
        systems: Some(systems),
        kinds: Some(vec![
            "alert.opened".into(),
            "host.unreachable".into(),
            "instance.transitioned".into(),
        ]),
        since_ms: Some(now - MAX_WINDOW_MS),
        limit: 1000,
        ..EventQuery::default()
    };
    for _ in 0..20 {
        let page = state.store().query_events(&query).await?;
        let bad = page.items.iter().find(|e| match e.kind.as_str() {
            "instance.transitioned" => matches!(
                e.typed(),
                Some(endstate_events::Event::InstanceTransitioned(t)) if matches!(t.status.as_str(), "degraded" | "unhealthy")
            ),
            _ => true,
        });
        if let Some(event) = bad {
            return Ok((event.time_ms, format!("when it last turned bad: {}", event.summary)));
        }
        match page.next {
            Some(next) => query.before = Some(EventSeq(next)),
            None => break,
        }
    }
    Ok((now, "now: nothing in it turned bad in the last 30 days".to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use endstate_types::ChangeId;

    use super::*;

    const AT: i64 = 1_000 * DAY_MS;

    fn event(seq: u64, ago_ms: i64, kind: &str, systems: &[&str], host: Option<&str>) -> Event {
        Event {
            seq: EventSeq(seq),
            time_ms: AT - ago_ms,
            kind: kind.to_string(),
            systems: systems.iter().map(|s| (*s).to_string()).collect(),
            host: host.map(str::to_string),
            component: None,
            change: None,
            actor: Some("alice".into()),
            summary: format!("event {seq}"),
            data: serde_json::json!({}),
        }
    }

    fn scope() -> Scope {
        Scope {
            host: Some("web-1".into()),
            component: Some("shop/web".into()),
            systems: ["shop".to_string()].into(),
            subsystems: ["cache".to_string()].into(),
            other_hosts: ["web-2".to_string()].into(),
        }
    }

    #[test]
    fn closer_in_time_and_topology_ranks_first_with_reasons() {
        let events = vec![
            // A change on the target's system 2 minutes before.
            Event {
                change: Some(ChangeId(7)),
                ..event(1, 2 * MINUTE_MS, "change.wave_started", &["shop"], None)
            },
            // A note on a subsystem 1 minute before.
            event(2, MINUTE_MS, "note.added", &["cache"], None),
            // The target's host lost 50 minutes before.
            event(3, 50 * MINUTE_MS, "host.unreachable", &[], Some("web-1")),
            // Not a suspect: after the moment, and an instance transition.
            event(4, -MINUTE_MS, "change.converged", &["shop"], None),
            event(5, MINUTE_MS, "instance.transitioned", &["shop"], Some("web-1")),
        ];
        let suspects = rank(&scope(), AT, &events);
        let shown: Vec<(u32, u64, &str)> = suspects.iter().map(|s| (s.rank, s.seq, s.reason.as_str())).collect();
        assert_eq!(
            shown,
            [
                (
                    1,
                    1,
                    "change 7, in progress then (change.wave_started), 2m00s before, on shop, the target's system"
                ),
                (
                    2,
                    2,
                    "a note by alice (note.added), 1m00s before, on cache, a subsystem"
                ),
                (
                    3,
                    3,
                    "a host event (host.unreachable), 50m00s before, on web-1, the target's host"
                ),
            ]
        );
        // 100 × 0.5^(2/15) × 0.8 × 1.0
        assert!((suspects[0].score - 73.0).abs() < 0.1, "{}", suspects[0].score);
        assert!(suspects[0].score > suspects[1].score && suspects[1].score > suspects[2].score);
    }

    #[test]
    fn events_of_one_change_or_run_are_one_suspect() {
        let mut run = event(3, 5 * MINUTE_MS, "action.started", &["shop"], None);
        run.data = endstate_events::Event::ActionStarted(endstate_events::ActionStarted {
            run: "run-4".into(),
            action: "flush".into(),
            hosts: vec!["web-1".into()],
        })
        .data();
        let mut run_end = event(4, 4 * MINUTE_MS, "action.finished", &["shop"], None);
        run_end.data = endstate_events::Event::ActionFinished(endstate_events::ActionFinished {
            run: "run-4".into(),
            action: "flush".into(),
            state: "succeeded".into(),
            hosts: None,
        })
        .data();
        let events = vec![
            Event {
                change: Some(ChangeId(2)),
                ..event(1, 20 * MINUTE_MS, "change.created", &["shop"], None)
            },
            Event {
                change: Some(ChangeId(2)),
                ..event(2, 10 * MINUTE_MS, "change.rolling", &["shop"], None)
            },
            run,
            run_end.clone(),
            run_end, // read twice (from the system and from the host): counted once
        ];
        let suspects = rank(&scope(), AT, &events);
        let shown: Vec<(u64, u32, Option<u64>, Option<&str>)> = suspects
            .iter()
            .map(|s| (s.seq, s.events, s.change, s.run.as_deref()))
            .collect();
        assert_eq!(shown, [(4, 2, None, Some("run-4")), (2, 2, Some(2), None)]);
        assert_eq!(
            suspects[0].reason,
            "action run run-4 (2 events, newest action.finished), 4m00s before, on shop, the target's system"
        );
    }

    #[test]
    fn a_change_in_progress_beats_one_that_had_ended() {
        let events = vec![
            Event {
                change: Some(ChangeId(3)),
                ..event(1, 10 * MINUTE_MS, "change.wave_started", &["shop"], None)
            },
            Event {
                change: Some(ChangeId(2)),
                ..event(2, MINUTE_MS, "change.converged", &["shop"], None)
            },
        ];
        let suspects = rank(&scope(), AT, &events);
        let reasons: Vec<&str> = suspects.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "change 3, in progress then (change.wave_started), 10m00s before, on shop, the target's system",
                "change 2, ended before (change.converged), 1m00s before, on shop, the target's system",
            ]
        );
    }

    #[test]
    fn same_host_beats_the_same_time_on_another_host() {
        let events = vec![
            event(1, 3 * MINUTE_MS, "host.facts_changed", &[], Some("web-2")),
            event(2, 3 * MINUTE_MS, "host.facts_changed", &[], Some("web-1")),
        ];
        let suspects = rank(&scope(), AT, &events);
        assert_eq!(suspects.iter().map(|s| s.seq).collect::<Vec<_>>(), [2, 1]);
        assert!(suspects[1].reason.ends_with("on web-2, another host of the system"));
    }

    #[test]
    fn the_moment_is_the_start_of_the_current_failure_or_the_last_change() {
        let sample = |ago: i64, health: Health, state: &str| history::Sample {
            time_ms: AT - ago,
            health,
            state: state.to_string(),
        };
        let failing = [
            sample(60 * MINUTE_MS, Health::Healthy, "healthy"),
            sample(30 * MINUTE_MS, Health::Failing, "degraded"),
            sample(20 * MINUTE_MS, Health::Failing, "unhealthy"),
        ];
        assert_eq!(
            moment(None, &failing, AT),
            (
                AT - 30 * MINUTE_MS,
                "when it turned unhealthy (failing since then)".to_string()
            )
        );
        let recovered = [
            sample(90 * MINUTE_MS, Health::Healthy, "healthy"),
            sample(60 * MINUTE_MS, Health::Failing, "degraded"),
            sample(50 * MINUTE_MS, Health::Failing, "unhealthy"),
            sample(30 * MINUTE_MS, Health::Healthy, "healthy"),
            sample(20 * MINUTE_MS, Health::Healthy, "healthy"),
        ];
        assert_eq!(
            moment(None, &recovered, AT),
            (
                AT - 60 * MINUTE_MS,
                "when it last turned degraded (it has recovered since)".to_string()
            )
        );
        let never_failed = [
            sample(60 * MINUTE_MS, Health::Neutral, "pending"),
            sample(30 * MINUTE_MS, Health::Healthy, "healthy"),
        ];
        assert_eq!(
            moment(None, &never_failed, AT),
            (
                AT - 30 * MINUTE_MS,
                "when it last changed state, to healthy".to_string()
            )
        );
        assert_eq!(moment(None, &[], AT).0, AT);
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(ago(45_000), "45s");
        assert_eq!(ago(12 * MINUTE_MS + 5_000), "12m05s");
        assert_eq!(ago(3 * 60 * MINUTE_MS + 5 * MINUTE_MS), "3h05m");
        assert_eq!(ago(2 * DAY_MS + 4 * 60 * MINUTE_MS), "2d04h");
    }
}
