//! "Always broken, or did it just happen?": the history of one host or instance, computed from
//! its transitions on the timeline.
//!
//! [`compute`] is pure (the caller gives the time and the samples), so the rules are tested on
//! synthetic transitions:
//!
//! - A sample is *healthy* (an instance `healthy`, a host reachable), *failing* (an instance
//!   `degraded` or `unhealthy`, a host unreachable), *neutral* (an instance `pending`: known,
//!   not failing) or *unknown* (an instance `unknown`, e.g. while its host is unreachable).
//!   A state lasts from its sample to the next one (or now).
//! - The share of time failing over 24 h, 7 d and 30 d is failing time over *observed* time:
//!   time before the first sample, and time in the unknown state, is not counted.
//! - Flapping: at least [`FLAP_CHANGES`] changes between healthy and failing (neutral and
//!   unknown samples are skipped) in the last hour.
//! - The label is `chronic` when the target failed more than half of the observed last 7 days
//!   and more than 24 hours in all of them (a target seen for ten minutes, failing for six, is
//!   new, not chronic), or fails now and has been failing for more than 24 hours; `new` when it
//!   fails now and is not chronic; `ok` otherwise.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use endstate_api::{HistoryView, UnhealthyShare};
use endstate_store::{Event, EventQuery, InstanceFilter};
use endstate_types::{EventSeq, HostName};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::Params;
use crate::{AppState, rfc3339};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// How far back the history looks.
pub(crate) const HISTORY_MS: i64 = 30 * DAY_MS;
/// Changes between healthy and failing in the last hour from which a target is flapping.
pub(crate) const FLAP_CHANGES: u64 = 5;
/// The most transitions read for one target (a target flapping every few seconds for 30 days).
const MAX_EVENTS: usize = 200_000;

/// How a sample counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Healthy,
    Failing,
    /// Known and not failing (an instance starting).
    Neutral,
    /// Not known (an instance whose host is unreachable): not counted.
    Unknown,
}

/// One observed state of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) time_ms: i64,
    pub(crate) health: Health,
    /// The state word shown as `current`.
    pub(crate) state: String,
}

/// What [`compute`] finds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stats {
    pub(crate) current: String,
    pub(crate) failing: bool,
    pub(crate) failing_since_ms: Option<i64>,
    pub(crate) first_failed_ms: Option<i64>,
    pub(crate) transitions: u64,
    /// (window, observed ms, failing ms) for 24 h, 7 d, 30 d.
    pub(crate) shares: Vec<(&'static str, i64, i64)>,
    pub(crate) flips_last_hour: u64,
    pub(crate) flapping: bool,
    pub(crate) label: &'static str,
}

/// The history at `now_ms` from `before` (the last sample older than 30 days, if any: the state
/// the window starts in) and `samples` (those of the last 30 days, in time order).
pub(crate) fn compute(now_ms: i64, before: Option<&Sample>, samples: &[Sample]) -> Stats {
    let window_start = now_ms - HISTORY_MS;
    // Segments: (start, end, health), covering what is known up to now.
    let mut starts: Vec<(i64, Health)> = Vec::with_capacity(samples.len() + 1);
    if let Some(before) = before {
        starts.push((window_start, before.health));
    }
    starts.extend(
        samples
            .iter()
            .map(|s| (s.time_ms.clamp(window_start, now_ms), s.health)),
    );
    let segments: Vec<(i64, i64, Health)> = starts
        .iter()
        .enumerate()
        .map(|(idx, (start, health))| {
            let end = starts.get(idx + 1).map_or(now_ms, |next| next.0);
            (*start, end.max(*start), *health)
        })
        .collect();
    let shares = [("24h", DAY_MS), ("7d", 7 * DAY_MS), ("30d", 30 * DAY_MS)]
        .into_iter()
        .map(|(name, length)| {
            let low = now_ms - length;
            let (mut observed, mut failing) = (0i64, 0i64);
            for (start, end, health) in &segments {
                let span = (*end).min(now_ms) - (*start).max(low);
                if span <= 0 || *health == Health::Unknown {
                    continue;
                }
                observed += span;
                if *health == Health::Failing {
                    failing += span;
                }
            }
            (name, observed, failing)
        })
        .collect::<Vec<_>>();

    let last = samples.last().or(before);
    let failing = last.is_some_and(|s| s.health == Health::Failing);
    let failing_since_ms = if failing {
        // The start of the trailing run of failing samples (the run may begin before the window).
        let mut since = None;
        for sample in before.into_iter().chain(samples.iter()).rev() {
            if sample.health != Health::Failing {
                break;
            }
            since = Some(sample.time_ms);
        }
        since
    } else {
        None
    };
    let first_failed_ms = before
        .into_iter()
        .chain(samples.iter())
        .find(|s| s.health == Health::Failing)
        .map(|s| s.time_ms);

    // Flips between healthy and failing in the last hour, from the class the hour starts in.
    let hour_start = now_ms - HOUR_MS;
    let mut class: Option<Health> = None;
    let mut flips_last_hour = 0u64;
    for sample in before.into_iter().chain(samples.iter()) {
        if !matches!(sample.health, Health::Healthy | Health::Failing) {
            continue;
        }
        if class.is_some_and(|c| c != sample.health) && sample.time_ms >= hour_start {
            flips_last_hour += 1;
        }
        class = Some(sample.health);
    }
    let flapping = flips_last_hour >= FLAP_CHANGES;

    let (_, observed_7d, failing_7d) = shares[1];
    let mostly_failing = observed_7d > 0 && failing_7d * 2 > observed_7d && failing_7d > DAY_MS;
    let long_failing = failing_since_ms.is_some_and(|since| now_ms - since > DAY_MS);
    let label = if mostly_failing || long_failing {
        "chronic"
    } else if failing {
        "new"
    } else {
        "ok"
    };
    Stats {
        current: last.map_or_else(|| "unknown".to_string(), |s| s.state.clone()),
        failing,
        failing_since_ms,
        first_failed_ms,
        transitions: samples.len() as u64,
        shares,
        flips_last_hour,
        flapping,
        label,
    }
}

/// What `target` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `host:NAME`
    Host(String),
    /// `system/component#slot@host`
    Instance { component: String, slot: u32, host: String },
    /// `check:system/check@host`: every target of that check run by that host's agent.
    Check { check: String, host: String },
}

pub(crate) const TARGET_SYNTAX: &str = "expected host:NAME, an instance system/component#slot@host (e.g. shop/web#0@dev-a) \
     or a check check:system/check@host (e.g. check:shop/web-http@dev-a)";

impl Target {
    pub(crate) fn parse(text: &str) -> Result<Target, String> {
        let text = text.trim();
        if let Some(host) = text.strip_prefix("host:") {
            endstate_types::validate_name(host).map_err(|error| format!("{text:?}: host {error}"))?;
            return Ok(Target::Host(host.to_string()));
        }
        if let Some(check) = text.strip_prefix("check:") {
            let parsed = check.split_once('@').and_then(|(key, host)| {
                let (system, name) = key.split_once('/')?;
                let ok = |part: &str| endstate_types::validate_name(part).is_ok();
                (ok(system) && ok(name) && ok(host)).then(|| Target::Check {
                    check: key.to_string(),
                    host: host.to_string(),
                })
            });
            return parsed.ok_or_else(|| format!("{text:?} is not a target: {TARGET_SYNTAX}"));
        }
        let parsed = text.split_once('@').and_then(|(instance, host)| {
            let (component, slot) = instance.split_once('#')?;
            let (system, name) = component.split_once('/')?;
            let ok = |part: &str| endstate_types::validate_name(part).is_ok();
            (ok(system) && ok(name) && ok(host)).then_some(())?;
            Some(Target::Instance {
                component: component.to_string(),
                slot: slot.parse().ok()?,
                host: host.to_string(),
            })
        });
        parsed.ok_or_else(|| format!("{text:?} is not a target: {TARGET_SYNTAX}"))
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Target::Host(_) => "host",
            Target::Instance { .. } => "instance",
            Target::Check { .. } => "check",
        }
    }

    pub(crate) fn display(&self) -> String {
        match self {
            Target::Host(host) => format!("host:{host}"),
            Target::Instance { component, slot, host } => format!("{component}#{slot}@{host}"),
            Target::Check { check, host } => format!("check:{check}@{host}"),
        }
    }

    /// The host the target lives on.
    pub(crate) fn host(&self) -> &str {
        match self {
            Target::Host(host) | Target::Instance { host, .. } | Target::Check { host, .. } => host,
        }
    }

    /// The system the target belongs to; a host belongs to none.
    pub(crate) fn system(&self) -> Option<&str> {
        match self {
            Target::Host(_) => None,
            Target::Instance { component: key, .. } | Target::Check { check: key, .. } => key.split('/').next(),
        }
    }

    /// The query of its events, without time bounds or direction.
    fn query(&self) -> EventQuery {
        match self {
            Target::Host(host) => EventQuery {
                kinds: Some(vec!["host.reachable".into(), "host.unreachable".into()]),
                host: Some(host.clone()),
                ..EventQuery::default()
            },
            Target::Instance { component, host, .. } => EventQuery {
                kinds: Some(vec!["instance.transitioned".into()]),
                host: Some(host.clone()),
                component: Some(component.clone()),
                ..EventQuery::default()
            },
            Target::Check { check, host } => EventQuery {
                systems: Some(vec![check.split('/').next().unwrap_or_default().to_string()]),
                kinds: Some(vec!["check.status".into()]),
                host: Some(host.clone()),
                ..EventQuery::default()
            },
        }
    }

    /// The event as a sample of this target; `None` for an event of another slot.
    fn sample(&self, event: &Event) -> Option<Sample> {
        match self {
            Target::Host(_) => {
                let reachable = event.kind == "host.reachable";
                Some(Sample {
                    time_ms: event.time_ms,
                    health: if reachable { Health::Healthy } else { Health::Failing },
                    state: if reachable { "reachable" } else { "unreachable" }.to_string(),
                })
            }
            Target::Instance { slot, .. } => {
                let Some(endstate_events::Event::InstanceTransitioned(t)) = event.typed() else {
                    return None;
                };
                if t.slot != *slot {
                    return None;
                }
                let status = t.status.as_str();
                let health = match status {
                    "healthy" => Health::Healthy,
                    "degraded" | "unhealthy" => Health::Failing,
                    "pending" => Health::Neutral,
                    _ => Health::Unknown,
                };
                Some(Sample {
                    time_ms: event.time_ms,
                    health,
                    state: status.to_string(),
                })
            }
            Target::Check { check, .. } => {
                let Some(endstate_events::Event::CheckStatus(c)) = event.typed() else {
                    return None;
                };
                if c.check != *check {
                    return None;
                }
                let status = c.to.as_str();
                let health = match status {
                    "ok" => Health::Healthy,
                    "warning" | "critical" => Health::Failing,
                    _ => Health::Unknown,
                };
                Some(Sample {
                    time_ms: event.time_ms,
                    health,
                    state: status.to_string(),
                })
            }
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// `host:NAME`, or an instance `system/component#slot@host` (e.g. `shop/web#0@dev-a`).
    #[param(
        required = true,
        pattern = r"^(host:[a-z0-9][a-z0-9._-]{0,62}|[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}#[0-9]{1,9}@[a-z0-9][a-z0-9._-]{0,62}|check:[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}@[a-z0-9][a-z0-9._-]{0,62})$"
    )]
    target: Option<String>,
}

/// The history of a host or an instance over the last 30 days: when it first failed, how many
/// transitions, the share of time failing over 24 h, 7 d and 30 d, whether it flaps, and
/// whether its trouble is `new` or `chronic`.
#[utoipa::path(get, path = "/v1/history", params(HistoryParams),
    responses((status = 200, body = HistoryView), (status = 400, body = endstate_api::Problem), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn history(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<HistoryParams>,
) -> Result<Json<HistoryView>, ApiError> {
    let text = params
        .target
        .ok_or_else(|| ApiError::bad_field("target", format!("is required: {TARGET_SYNTAX}")))?;
    let target = Target::parse(&text).map_err(|message| ApiError::bad_field("target", message))?;
    authorize(&actor, Verb::Read, target.system())?;
    let now = state.now_ms();
    let (before, samples) = load_samples(&state, &target, now).await?;
    let stats = compute(now, before.as_ref(), &samples);
    Ok(Json(HistoryView {
        target: target.display(),
        kind: target.kind().to_string(),
        now: rfc3339(now),
        current: stats.current,
        failing: stats.failing,
        failing_since: stats.failing_since_ms.map(rfc3339),
        first_failed: stats.first_failed_ms.map(rfc3339),
        transitions: stats.transitions,
        unhealthy: stats
            .shares
            .iter()
            .map(|(window, observed, failing)| UnhealthyShare {
                window: (*window).to_string(),
                percent: percent(*failing, *observed),
                observed_s: u64::try_from(observed / 1000).unwrap_or(0),
                failing_s: u64::try_from(failing / 1000).unwrap_or(0),
            })
            .collect(),
        flapping: stats.flapping,
        flips_last_hour: stats.flips_last_hour,
        label: stats.label.to_string(),
    }))
}

/// The samples of `target` over the 30 days before `now`, in time order, and the last one before
/// them (the state the window starts in). A target without any that is not known either (a host
/// not in the inventory, an instance not placed, a check never reported) is not found.
pub(crate) async fn load_samples(
    state: &AppState,
    target: &Target,
    now: i64,
) -> Result<(Option<Sample>, Vec<Sample>), ApiError> {
    let window_start = now - HISTORY_MS;

    let mut samples = Vec::new();
    let mut query = EventQuery {
        since_ms: Some(window_start),
        after: Some(EventSeq(0)),
        limit: 1000,
        ..target.query()
    };
    let mut n_events = 0usize;
    loop {
        let page = state.store().query_events(&query).await?;
        let n = page.items.len();
        n_events += n;
        samples.extend(page.items.iter().filter_map(|event| target.sample(event)));
        if n < 1000 {
            break;
        }
        if n_events >= MAX_EVENTS {
            return Err(ApiError::Unavailable(format!(
                "{} has more than {MAX_EVENTS} transitions in 30 days; read them with /v1/timeline",
                target.display()
            )));
        }
        query.after = page.next.map(EventSeq);
    }
    // The state the window starts in: the newest sample before it (a few pages back at most).
    let mut before = None;
    let mut back = EventQuery {
        until_ms: Some(window_start),
        limit: 1000,
        ..target.query()
    };
    for _ in 0..10 {
        let page = state.store().query_events(&back).await?;
        before = page.items.iter().find_map(|event| target.sample(event));
        match page.next {
            Some(next) if before.is_none() => back.before = Some(EventSeq(next)),
            _ => break,
        }
    }
    if samples.is_empty() && before.is_none() {
        let known = match &target {
            Target::Host(host) => state.store().get_host(&HostName(host.clone())).await?.is_some(),
            Target::Instance { component, slot, host } => state
                .store()
                .list_instances(InstanceFilter {
                    system: None,
                    host: Some(HostName(host.clone())),
                })
                .await?
                .iter()
                .any(|i| &i.component_key == component && i.slot == *slot),
            Target::Check { .. } => false,
        };
        if !known {
            return Err(ApiError::NotFound(match &target {
                Target::Host(host) => format!("host {host:?} is not in the inventory and has no history"),
                Target::Instance { .. } => format!("instance {} is not placed and has no history", target.display()),
                Target::Check { check, host } => {
                    format!("check {check} has no results from host {host} in the last 30 days")
                }
            }));
        }
    }
    samples.sort_by_key(|s| s.time_ms);
    Ok((before, samples))
}

/// `part` of `whole` in percent, to two decimals; `None` when `whole` is 0.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn percent(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 * 10_000.0 / whole as f64).round() / 100.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 100 * DAY_MS;

    fn at(ago_ms: i64, health: Health) -> Sample {
        Sample {
            time_ms: NOW - ago_ms,
            health,
            state: match health {
                Health::Healthy => "healthy",
                Health::Failing => "unhealthy",
                Health::Neutral => "pending",
                Health::Unknown => "unknown",
            }
            .to_string(),
        }
    }

    fn pct(stats: &Stats, window: &str) -> Option<f64> {
        let (_, observed, failing) = stats.shares.iter().find(|(w, _, _)| *w == window).unwrap();
        percent(*failing, *observed)
    }

    #[test]
    fn nothing_known_is_unknown_and_ok() {
        let stats = compute(NOW, None, &[]);
        assert_eq!(stats.current, "unknown");
        assert!(!stats.failing);
        assert_eq!((pct(&stats, "24h"), pct(&stats, "30d")), (None, None));
        assert_eq!((stats.transitions, stats.label), (0, "ok"));
    }

    #[test]
    fn time_before_the_first_sample_is_not_counted() {
        // Healthy from 12 h ago, failing for the last 3 h: 3/12 of the observed 24 h.
        let samples = [at(12 * HOUR_MS, Health::Healthy), at(3 * HOUR_MS, Health::Failing)];
        let stats = compute(NOW, None, &samples);
        assert_eq!(pct(&stats, "24h"), Some(25.0));
        assert_eq!(pct(&stats, "7d"), Some(25.0));
        assert_eq!(pct(&stats, "30d"), Some(25.0));
        assert_eq!(stats.shares[0].1, 12 * HOUR_MS, "observed: 12 h, not 24");
        assert!(stats.failing);
        assert_eq!(stats.failing_since_ms, Some(NOW - 3 * HOUR_MS));
        assert_eq!(stats.first_failed_ms, Some(NOW - 3 * HOUR_MS));
        assert_eq!(
            (stats.transitions, stats.label, stats.current.as_str()),
            (2, "new", "unhealthy")
        );
    }

    #[test]
    fn windows_weight_by_time_and_the_state_before_the_window_counts() {
        // Failing since 40 days ago (before the window), healthy from 10 days ago,
        // failing 2 h out of the last day (from 6 h to 4 h ago).
        let before = at(40 * DAY_MS, Health::Failing);
        let samples = [
            at(10 * DAY_MS, Health::Healthy),
            at(6 * HOUR_MS, Health::Failing),
            at(4 * HOUR_MS, Health::Healthy),
        ];
        let stats = compute(NOW, Some(&before), &samples);
        assert_eq!(pct(&stats, "24h"), Some(8.33), "2 h of 24");
        // 7 d: 2 h failing of 168 h.
        assert_eq!(pct(&stats, "7d"), Some(1.19));
        // 30 d: 20 days + 2 h failing of 720 h = 482/720.
        assert_eq!(pct(&stats, "30d"), Some(66.94));
        assert_eq!(stats.first_failed_ms, Some(NOW - 40 * DAY_MS));
        assert!(!stats.failing);
        assert_eq!(stats.failing_since_ms, None);
        assert_eq!(
            stats.transitions, 3,
            "the sample before the window is not a transition of it"
        );
        assert_eq!(stats.label, "ok");
    }

    #[test]
    fn unknown_time_is_not_observed_and_pending_is_not_failing() {
        // Healthy 10 h ago, unknown (host cut off) 8 h ago, pending 4 h ago, failing 2 h ago.
        let samples = [
            at(10 * HOUR_MS, Health::Healthy),
            at(8 * HOUR_MS, Health::Unknown),
            at(4 * HOUR_MS, Health::Neutral),
            at(2 * HOUR_MS, Health::Failing),
        ];
        let stats = compute(NOW, None, &samples);
        // Observed: 2 h healthy + 2 h pending + 2 h failing = 6 h; failing 2 h.
        assert_eq!(stats.shares[0], ("24h", 6 * HOUR_MS, 2 * HOUR_MS));
        assert_eq!(pct(&stats, "24h"), Some(33.33));
        assert_eq!(stats.failing_since_ms, Some(NOW - 2 * HOUR_MS));
    }

    #[test]
    fn chronic_when_failing_most_of_the_week_or_longer_than_a_day() {
        // Failing 4 of the last 7 days, healthy now: chronic.
        let samples = [at(7 * DAY_MS, Health::Failing), at(3 * DAY_MS, Health::Healthy)];
        let stats = compute(NOW, None, &samples);
        assert_eq!(pct(&stats, "7d"), Some(57.14));
        assert_eq!(stats.label, "chronic");
        // Exactly half is not more than half.
        let samples = [at(6 * DAY_MS, Health::Failing), at(3 * DAY_MS, Health::Healthy)];
        assert_eq!(compute(NOW, None, &samples).label, "ok");
        // Healthy for six days, then failing for 25 hours: chronic although only 14.88% of the week.
        let samples = [at(7 * DAY_MS, Health::Healthy), at(25 * HOUR_MS, Health::Failing)];
        let stats = compute(NOW, None, &samples);
        assert_eq!(pct(&stats, "7d"), Some(14.88));
        assert_eq!(stats.label, "chronic");
        // Failing for 23 hours: new.
        let samples = [at(7 * DAY_MS, Health::Healthy), at(23 * HOUR_MS, Health::Failing)];
        assert_eq!(compute(NOW, None, &samples).label, "new");
        // Seen for 10 minutes, failing for the last 6 of them: most of what was seen, but new.
        let samples = [at(10 * 60_000, Health::Healthy), at(6 * 60_000, Health::Failing)];
        let stats = compute(NOW, None, &samples);
        assert_eq!(pct(&stats, "7d"), Some(60.0));
        assert_eq!(stats.label, "new");
    }

    #[test]
    fn flapping_needs_five_changes_in_the_last_hour() {
        let minute = 60_000;
        // Five changes within the hour: healthy before, then F H F H F.
        let mut samples = vec![at(2 * HOUR_MS, Health::Healthy)];
        for (idx, health) in [
            Health::Failing,
            Health::Healthy,
            Health::Failing,
            Health::Healthy,
            Health::Failing,
        ]
        .into_iter()
        .enumerate()
        {
            samples.push(at((50 - 10 * idx as i64) * minute, health));
        }
        let stats = compute(NOW, None, &samples);
        assert_eq!((stats.flips_last_hour, stats.flapping), (5, true));
        assert_eq!(stats.failing_since_ms, Some(NOW - 10 * minute));
        // Four changes: not flapping. A repeated state and pending samples are no change.
        let samples = [
            at(2 * HOUR_MS, Health::Healthy),
            at(50 * minute, Health::Failing),
            at(45 * minute, Health::Failing),
            at(40 * minute, Health::Neutral),
            at(30 * minute, Health::Healthy),
            at(20 * minute, Health::Failing),
            at(10 * minute, Health::Healthy),
        ];
        let stats = compute(NOW, None, &samples);
        assert_eq!((stats.flips_last_hour, stats.flapping), (4, false));
        // Changes older than an hour do not count.
        let samples = [
            at(3 * HOUR_MS, Health::Healthy),
            at(2 * HOUR_MS, Health::Failing),
            at(90 * minute, Health::Healthy),
            at(80 * minute, Health::Failing),
            at(70 * minute, Health::Healthy),
            at(30 * minute, Health::Failing),
        ];
        assert_eq!(compute(NOW, None, &samples).flips_last_hour, 1);
    }

    #[test]
    fn targets_parse_and_bad_ones_say_the_syntax() {
        assert_eq!(Target::parse("host:dev-a"), Ok(Target::Host("dev-a".into())));
        assert_eq!(
            Target::parse("shop/web#2@dev-b"),
            Ok(Target::Instance {
                component: "shop/web".into(),
                slot: 2,
                host: "dev-b".into()
            })
        );
        for bad in [
            "dev-a",
            "shop/web@dev-a",
            "shop/web#x@dev-a",
            "web#0@dev-a",
            "host:",
            "shop/web#0@",
        ] {
            let error = Target::parse(bad).unwrap_err();
            assert!(error.contains(bad.trim_start_matches("host:")), "{bad}: {error}");
        }
        assert!(
            Target::parse("shop/web@dev-a")
                .unwrap_err()
                .contains("system/component#slot@host")
        );
    }
}
