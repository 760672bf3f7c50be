//! Sanctioned actions: a person asks to run an action a system declares; the server checks the
//! parameters, the rules of engagement, reentrancy, rollouts and rate limits, waits for a second
//! person's approval where the action needs one, then fans the run out through the agents
//! (`concurrency` hosts at a time), follows their live output and records the whole run on the
//! timeline: who asked and why, with which parameters, who approved, each host's result.
//!
//! - **What runs** is the host's catalogue: the agent gets the action's command with its desired
//!   set, and a run request names the action and gives parameter values only (see the agent's
//!   `actions` module), signed with the server's CA key, which the agent checks against the CA
//!   certificate it pinned at enrolment. A refusal by the agent is an `action.refused` event.
//! - **Events** (all on the system's timeline): `action.requested`, `action.escalated` (engagement
//!   `escalate`: nothing runs, the contact is named), `action.approved`, `action.started`,
//!   `action.host_finished`, `action.refused`, `action.host_lost`, `action.cancelled`,
//!   `action.finished`. A host's result is stored with the agent's observations, once, whatever is
//!   resent.
//! - **State** is in memory and rebuilt from those events at start; a run that was going when the
//!   server stopped is finished as `interrupted` (its hosts' results still land if they come).
//!
//! - **Rate limits**: an action's own (`rate_limit`, default 10 runs per 10 minutes, declared in
//!   the spec), and [`MAX_RUNS_PER_SYSTEM`] runs of a system's actions within [`RATE_WINDOW_MS`].
//!
//! # Caveats
//! - The per-system limit is fixed, not declared.
//! - A run waiting for approval waits forever (until cancelled); approvals do not expire.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use endstate_agent_proto::{ActionOutcome, ActionOutput, ActionResult, CancelAction, FromServer, RunAction};
use endstate_api::{RunDecision, RunHostView, RunRequest, RunView};
use endstate_events::Event;
use endstate_spec::{Action, Engagement, ParamValue, ParameterType};
use endstate_store::NewEvent;
use endstate_types::Generation;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::{JsonBody, Params};
use crate::{AppState, rfc3339};

/// Runs of one system's actions within [`RATE_WINDOW_MS`].
pub(crate) const MAX_RUNS_PER_SYSTEM: usize = 100;
/// The per-system rate limit's window: ten minutes.
pub(crate) const RATE_WINDOW_MS: i64 = 10 * 60 * 1000;
/// How long after its timeout a host's result may still come before the host counts as lost.
const RESULT_GRACE_MS: i64 = 10_000;
/// How long a host may take to receive the catalogue a run needs.
const CATALOGUE_WAIT_MS: i64 = 30_000;
/// The tail of a host's output kept for the view.
const KEPT_OUTPUT_BYTES: usize = endstate_agent_proto::limits::MAX_ACTION_OUTPUT_BYTES;
/// The tail of a host's output put on the timeline with its result.
const EVENT_OUTPUT_BYTES: usize = 8 * 1024;

/// Every run this server knows, and a wake-up for their drivers.
#[derive(Default)]
pub(crate) struct Runs {
    inner: Mutex<Inner>,
    wake: Notify,
}

#[derive(Default)]
struct Inner {
    highest: u64,
    runs: BTreeMap<u64, Run>,
}

#[derive(Clone, Debug)]
struct Run {
    n: u64,
    system: String,
    action: String,
    params: BTreeMap<String, String>,
    reason: Option<String>,
    requested_by: String,
    requested_ms: i64,
    approved_by: Option<String>,
    state: RunState,
    hosts: BTreeMap<String, HostRun>,
    concurrency: usize,
    timeout_ms: i64,
    reentrant: bool,
    finished_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    AwaitingApproval,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
}

#[derive(Clone, Debug, Default)]
struct HostRun {
    state: HostState,
    /// When it was sent to the agent (or, while pending, when it started waiting for it).
    since_ms: i64,
    exit_code: Option<i32>,
    signal: Option<i32>,
    duration_ms: Option<u64>,
    output: String,
    output_bytes: u64,
    detail: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum HostState {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Refused,
    Lost,
}

impl RunState {
    fn as_str(self) -> &'static str {
        match self {
            RunState::AwaitingApproval => "awaiting_approval",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::Interrupted => "interrupted",
        }
    }

    fn open(self) -> bool {
        matches!(self, RunState::AwaitingApproval | RunState::Running)
    }
}

impl HostState {
    fn as_str(self) -> &'static str {
        match self {
            HostState::Pending => "pending",
            HostState::Running => "running",
            HostState::Succeeded => "succeeded",
            HostState::Failed => "failed",
            HostState::TimedOut => "timed_out",
            HostState::Cancelled => "cancelled",
            HostState::Refused => "refused",
            HostState::Lost => "lost",
        }
    }

    fn done(self) -> bool {
        !matches!(self, HostState::Pending | HostState::Running)
    }

    fn of(outcome: ActionOutcome) -> HostState {
        match outcome {
            ActionOutcome::Succeeded => HostState::Succeeded,
            ActionOutcome::Failed => HostState::Failed,
            ActionOutcome::TimedOut => HostState::TimedOut,
            ActionOutcome::Cancelled => HostState::Cancelled,
            ActionOutcome::Refused => HostState::Refused,
        }
    }
}

impl Run {
    fn id(&self) -> String {
        format!("run-{}", self.n)
    }

    fn key(&self) -> String {
        format!("{}/{}", self.system, self.action)
    }

    /// "2 of 3 hosts succeeded; web-c failed (exit code 1)".
    fn summary(&self) -> String {
        let total = self.hosts.len();
        let ok = self.hosts.values().filter(|h| h.state == HostState::Succeeded).count();
        let mut text = match self.state {
            RunState::AwaitingApproval => format!(
                "awaiting approval by someone other than {} ({total} hosts)",
                self.requested_by
            ),
            RunState::Running => {
                let running = self.hosts.values().filter(|h| h.state == HostState::Running).count();
                format!("{ok} of {total} hosts succeeded, {running} running")
            }
            _ => format!("{ok} of {total} hosts succeeded"),
        };
        let others: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.state.done() && h.state != HostState::Succeeded)
            .map(|(host, h)| {
                let why = match (h.exit_code, h.signal, h.detail.is_empty()) {
                    (Some(code), _, _) => format!(" (exit code {code})"),
                    (None, _, false) => format!(" ({})", first_line(&h.detail)),
                    (None, Some(signal), true) => format!(" (signal {signal})"),
                    (None, None, true) => String::new(),
                };
                format!("{host} {}{why}", h.state.as_str())
            })
            .collect();
        if !others.is_empty() {
            text.push_str("; ");
            text.push_str(&others.join(", "));
        }
        text
    }

    fn view(&self, with_output: bool) -> RunView {
        RunView {
            id: self.id(),
            system: self.system.clone(),
            action: self.action.clone(),
            params: self.params.clone(),
            reason: self.reason.clone(),
            requested_by: self.requested_by.clone(),
            requested_at: rfc3339(self.requested_ms),
            approved_by: self.approved_by.clone(),
            state: self.state.as_str().to_owned(),
            summary: self.summary(),
            hosts: self
                .hosts
                .iter()
                .map(|(host, h)| RunHostView {
                    host: host.clone(),
                    state: h.state.as_str().to_owned(),
                    exit_code: h.exit_code,
                    signal: h.signal,
                    duration_ms: h.duration_ms,
                    output: if with_output { h.output.clone() } else { String::new() },
                    output_bytes: h.output_bytes,
                    detail: h.detail.clone(),
                })
                .collect(),
            finished_at: self.finished_ms.map(rfc3339),
        }
    }

    /// An event of this run; `event` is given the run's id and its action's name.
    fn event(
        &self,
        at: i64,
        event: impl FnOnce(String, String) -> endstate_events::Event,
        actor: &str,
        summary: String,
    ) -> NewEvent {
        NewEvent {
            systems: vec![self.system.clone()],
            actor: Some(actor.to_owned()),
            ..NewEvent::of(at, &event(self.id(), self.action.clone()), summary)
        }
    }
}

impl Runs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn parse_run_id(id: &str) -> Option<u64> {
    id.strip_prefix("run-")?.parse().ok()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn tail_of(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

// === parameters ===

/// Checks given values against an action's declared parameters and applies defaults: the values
/// as the agent gets them (text), or every problem by field path (`params.scope`).
pub(crate) fn resolve_params(
    action: &Action,
    given: &BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut problems: Vec<(String, String)> = Vec::new();
    for name in given.keys() {
        if !action.parameters.contains_key(name) {
            let declared: Vec<&str> = action.parameters.keys().map(String::as_str).collect();
            problems.push((
                format!("params.{name}"),
                if declared.is_empty() {
                    format!("{} takes no parameters", action.name)
                } else {
                    format!("not a parameter of {}; it has {}", action.name, declared.join(", "))
                },
            ));
        }
    }
    let mut out = BTreeMap::new();
    for (name, declared) in &action.parameters {
        let field = format!("params.{name}");
        let value = match (given.get(name), &declared.default) {
            (Some(value), _) => value.clone(),
            (None, Some(default)) => match default {
                ParamValue::Boolean(b) => serde_json::Value::Bool(*b),
                ParamValue::Integer(n) => serde_json::Value::from(*n),
                ParamValue::String(s) => serde_json::Value::String(s.clone()),
            },
            (None, None) if declared.required => {
                problems.push((field, "required, and not given".to_owned()));
                continue;
            }
            (None, None) => continue,
        };
        match check_param(declared, &value) {
            Ok(text) => {
                out.insert(name.clone(), text);
            }
            Err(message) => problems.push((field, message)),
        }
    }
    if problems.is_empty() {
        return Ok(out);
    }
    let detail = problems
        .iter()
        .map(|(field, message)| format!("{field}: {message}"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(ApiError::Invalid {
        detail,
        errors: problems
            .into_iter()
            .map(|(field, message)| endstate_api::FieldError { field, message })
            .collect(),
    })
}

fn check_param(declared: &endstate_spec::Parameter, value: &serde_json::Value) -> Result<String, String> {
    use serde_json::Value;
    match declared.kind {
        ParameterType::Boolean => match value {
            Value::Bool(b) => Ok(b.to_string()),
            Value::String(s) if s == "true" || s == "false" => Ok(s.clone()),
            other => Err(format!("{other} is not true or false")),
        },
        ParameterType::Integer => {
            let n = match value {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            }
            .ok_or_else(|| format!("{value} is not a whole number"))?;
            if declared.min.is_some_and(|min| n < min) || declared.max.is_some_and(|max| n > max) {
                return Err(format!(
                    "{n} is outside {}..={}",
                    declared.min.map(|m| m.to_string()).unwrap_or_default(),
                    declared.max.map(|m| m.to_string()).unwrap_or_default()
                ));
            }
            Ok(n.to_string())
        }
        ParameterType::Enum => match value {
            Value::String(s) if declared.values.contains(s) => Ok(s.clone()),
            other => Err(format!("{other} is not one of {}", declared.values.join(", "))),
        },
        ParameterType::String => {
            let Value::String(s) = value else {
                return Err(format!("{value} is not a string"));
            };
            if s.contains('\0') {
                return Err("contains a NUL character".to_owned());
            }
            if s.len() > endstate_agent_proto::limits::MAX_PATH_BYTES {
                return Err(format!(
                    "{} bytes, at most {}",
                    s.len(),
                    endstate_agent_proto::limits::MAX_PATH_BYTES
                ));
            }
            if let Some(pattern) = &declared.pattern {
                let whole = regex_lite::Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|error| format!("the declared pattern does not compile: {error}"))?;
                if !whole.is_match(s) {
                    return Err(format!("{s:?} does not match the pattern {pattern}"));
                }
            }
            Ok(s.clone())
        }
    }
}

// === routes ===

/// Asks to run an action: it starts at once, waits for approval, or is refused with the reason.
#[utoipa::path(post, path = "/v1/runs", request_body = RunRequest,
    responses((status = 201, body = RunView), (status = 422, description = "unknown action, bad parameters or hosts", body = endstate_api::Problem),
        (status = 403, description = "not allowed, or escalate only (the contact is named)", body = endstate_api::Problem),
        (status = 409, description = "a non-reentrant run of it is going, or a change rolls on the system", body = endstate_api::Problem),
        (status = 429, description = "the action's or the system's run rate limit", body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn request(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JsonBody(request): JsonBody<RunRequest>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    authorize(&actor, Verb::Operate, Some(&request.system))?;
    let current = state.current().await?;
    let desired = current.shown().map(|(_, d)| std::sync::Arc::clone(d));
    let Some(desired) = desired else {
        return Err(ApiError::bad_field(
            "system",
            "no desired state has converged yet: no actions are declared",
        ));
    };
    if !desired.systems.contains_key(&request.system) {
        return Err(ApiError::bad_field(
            "system",
            format!("no system {:?} is declared", request.system),
        ));
    }
    let action = desired
        .actions
        .values()
        .find(|a| a.system == request.system && a.name == request.action)
        .cloned()
        .ok_or_else(|| {
            let mut names: Vec<&str> = desired
                .actions
                .values()
                .filter(|a| a.system == request.system)
                .map(|a| a.name.as_str())
                .collect();
            names.sort_unstable();
            ApiError::bad_field(
                "action",
                if names.is_empty() {
                    format!("system {} declares no actions", request.system)
                } else {
                    format!(
                        "system {} declares no action {:?}; it has {}",
                        request.system,
                        request.action,
                        names.join(", ")
                    )
                },
            )
        })?;
    let params = resolve_params(&action, &request.params)?;
    if let Some(reason) = &request.reason
        && reason.len() > 4096
    {
        return Err(ApiError::bad_field(
            "reason",
            format!("{} bytes, at most 4096", reason.len()),
        ));
    }
    let key = format!("{}/{}", action.system, action.name);
    let now = state.now_ms();

    if action.engagement == Engagement::Escalate {
        let contact = action.escalate_to.clone().unwrap_or_default();
        state
            .store()
            .append_events(vec![NewEvent {
                systems: vec![action.system.clone()],
                actor: Some(actor.name.clone()),
                ..NewEvent::of(
                    now,
                    &endstate_events::Event::ActionEscalated(endstate_events::ActionEscalated {
                        action: action.name.clone(),
                        params: params.clone(),
                        reason: request.reason.clone(),
                        escalate_to: contact.clone(),
                    }),
                    format!(
                        "{} asked to run {key}, which is escalate only: contact {contact}",
                        actor.name
                    ),
                )
            }])
            .await?;
        state.written();
        return Err(ApiError::Forbidden(format!(
            "{key} is escalate only: it is not run from here; contact {contact}"
        )));
    }
    if !action.allow_during_rollout
        && let Some(rollout) = &current.rollout
    {
        let plan = crate::record::plan_of(&rollout.change).unwrap_or_default();
        let prefix = format!("{}/", action.system);
        if plan.steps.iter().any(|s| s.component.starts_with(&prefix)) {
            return Err(ApiError::Conflict(format!(
                "change {} is rolling out on system {} and {key} is not allowed during a rollout (allow_during_rollout: false); wait for it, or pause it",
                rollout.change.id, action.system
            )));
        }
    }

    // The hosts: those whose catalogue offers the action, narrowed by `hosts`.
    let offered: Vec<String> = state
        .hub()
        .map(|hub| hub.action_hosts(&key))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let hosts: Vec<String> = if request.hosts.is_empty() {
        offered.clone()
    } else {
        let mut problems = Vec::new();
        for (i, host) in request.hosts.iter().enumerate() {
            if !offered.contains(host) {
                problems.push(endstate_api::FieldError {
                    field: format!("hosts[{i}]"),
                    message: format!(
                        "{host} is not a host of {key} (its hosts: {})",
                        if offered.is_empty() {
                            "none".to_owned()
                        } else {
                            offered.join(", ")
                        }
                    ),
                });
            }
        }
        if !problems.is_empty() {
            return Err(ApiError::Invalid {
                detail: problems
                    .iter()
                    .map(|p| p.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
                errors: problems,
            });
        }
        let mut hosts = request.hosts.clone();
        hosts.sort();
        hosts.dedup();
        hosts
    };
    if hosts.is_empty() {
        let targets = match &action.targets {
            endstate_spec::Targets::Component(c) => format!("the hosts running {c}"),
            endstate_spec::Targets::Hosts(s) => format!("the hosts matching {s}"),
        };
        return Err(ApiError::bad_field(
            "hosts",
            format!("{key} has no host to run on: it targets {targets}, and none is enrolled and assigned"),
        ));
    }

    let run = {
        let runs = state.runs();
        let mut inner = runs.lock();
        let recent = |window_ms: i64, f: &dyn Fn(&Run) -> bool| {
            inner
                .runs
                .values()
                .filter(|r| r.requested_ms > now - window_ms && f(r))
                .count()
        };
        let limit = action.rate_limit;
        let per_ms = i64::try_from(limit.per.as_std().as_millis()).unwrap_or(i64::MAX);
        if recent(per_ms, &|r| r.key() == key) >= usize::try_from(limit.runs).unwrap_or(usize::MAX) {
            return Err(ApiError::TooManyRuns(format!(
                "{key} ran {} times within {}, its rate limit; wait, or look at `endstate runs --system {}`",
                limit.runs, limit.per, action.system
            )));
        }
        if recent(RATE_WINDOW_MS, &|r| r.system == action.system) >= MAX_RUNS_PER_SYSTEM {
            return Err(ApiError::TooManyRuns(format!(
                "system {} had {MAX_RUNS_PER_SYSTEM} runs in the last {} minutes, its limit",
                action.system,
                RATE_WINDOW_MS / 60_000
            )));
        }
        if let Some(open) = inner.runs.values().find(|r| r.key() == key && r.state.open())
            && (!action.reentrant || !open.reentrant)
        {
            return Err(ApiError::Conflict(format!(
                "{} of {key} (asked by {}) is {}, and {key} is not reentrant: wait for it, or cancel it with `endstate cancel {}`",
                open.id(),
                open.requested_by,
                open.state.as_str().replace('_', " "),
                open.id()
            )));
        }
        inner.highest += 1;
        let run = Run {
            n: inner.highest,
            system: action.system.clone(),
            action: action.name.clone(),
            params,
            reason: request.reason.clone(),
            requested_by: actor.name.clone(),
            requested_ms: now,
            approved_by: None,
            state: if action.engagement == Engagement::Approval {
                RunState::AwaitingApproval
            } else {
                RunState::Running
            },
            hosts: hosts
                .iter()
                .map(|h| {
                    (
                        h.clone(),
                        HostRun {
                            since_ms: now,
                            ..HostRun::default()
                        },
                    )
                })
                .collect(),
            concurrency: usize::try_from(action.concurrency).unwrap_or(1).max(1),
            timeout_ms: i64::try_from(action.timeout.as_std().as_millis()).unwrap_or(i64::MAX),
            reentrant: action.reentrant,
            finished_ms: None,
        };
        inner.runs.insert(run.n, run.clone());
        run
    };
    let why = run.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    let mut events = vec![run.event(
        now,
        |run_id, action_name| {
            endstate_events::Event::ActionRequested(endstate_events::ActionRequested {
                run: run_id,
                action: action_name,
                params: run.params.clone(),
                reason: run.reason.clone(),
                hosts: hosts.clone(),
                engagement: engagement_word(action.engagement).to_owned(),
                concurrency: run.concurrency as u64,
                timeout_ms: run.timeout_ms,
                reentrant: run.reentrant,
            })
        },
        &actor.name,
        format!(
            "{} asked to run {key} on {} host(s){}{why}",
            actor.name,
            hosts.len(),
            if run.state == RunState::AwaitingApproval {
                ", which needs approval"
            } else {
                ""
            }
        ),
    )];
    if run.state == RunState::Running {
        events.push(started_event(&run, now, &actor.name));
    }
    if let Err(error) = state.store().append_events(events).await {
        // Not recorded: not run.
        state.runs().lock().runs.remove(&run.n);
        return Err(error.into());
    }
    state.written();
    if run.state == RunState::Running {
        spawn_driver(&state, run.n);
    }
    Ok((StatusCode::CREATED, Json(run.view(true))))
}

fn engagement_word(engagement: Engagement) -> &'static str {
    match engagement {
        Engagement::Direct => "direct",
        Engagement::Approval => "approval",
        Engagement::Escalate => "escalate",
    }
}

fn started_event(run: &Run, at: i64, actor: &str) -> NewEvent {
    run.event(
        at,
        |run_id, action_name| {
            endstate_events::Event::ActionStarted(endstate_events::ActionStarted {
                run: run_id,
                action: action_name,
                hosts: run.hosts.keys().cloned().collect(),
            })
        },
        actor,
        format!(
            "{} started on {} host(s), {} at a time",
            run.id(),
            run.hosts.len(),
            run.concurrency
        ),
    )
}

/// Approves a run someone else asked for; it starts at once.
#[utoipa::path(post, path = "/v1/runs/{id}/approve", params(("id" = String, Path, description = "run-N")), request_body = RunDecision,
    responses((status = 200, body = RunView), (status = 403, description = "your own run, or not an approver of the system", body = endstate_api::Problem),
        (status = 404, body = endstate_api::Problem), (status = 409, description = "not awaiting approval", body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn approve(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    JsonBody(decision): JsonBody<RunDecision>,
) -> Result<Json<RunView>, ApiError> {
    let (n, system) = find(&state, &id)?;
    authorize(&actor, Verb::Approve, Some(&system))?;
    let now = state.now_ms();
    let run = {
        let runs = state.runs();
        let mut inner = runs.lock();
        let run = inner.runs.get_mut(&n).ok_or_else(|| not_found(&id))?;
        if run.state != RunState::AwaitingApproval {
            return Err(ApiError::Conflict(format!(
                "{id} is {}, not awaiting approval",
                run.state.as_str().replace('_', " ")
            )));
        }
        if run.requested_by == actor.name {
            return Err(ApiError::Forbidden(format!(
                "{id} was asked for by {}: a second person must approve it",
                actor.name
            )));
        }
        run.state = RunState::Running;
        run.approved_by = Some(actor.name.clone());
        for host in run.hosts.values_mut() {
            host.since_ms = now;
        }
        run.clone()
    };
    let why = decision.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    let events = vec![
        run.event(
            now,
            |run_id, action_name| {
                endstate_events::Event::ActionApproved(endstate_events::ActionApproved {
                    run: run_id,
                    action: action_name,
                    reason: decision.reason.clone(),
                    requested_by: run.requested_by.clone(),
                })
            },
            &actor.name,
            format!(
                "{} approved {} of {} asked by {}{why}",
                actor.name,
                run.id(),
                run.key(),
                run.requested_by
            ),
        ),
        started_event(&run, now, &actor.name),
    ];
    if let Err(error) = state.store().append_events(events).await {
        if let Some(run) = state.runs().lock().runs.get_mut(&n) {
            run.state = RunState::AwaitingApproval;
            run.approved_by = None;
        }
        return Err(error.into());
    }
    state.written();
    spawn_driver(&state, n);
    Ok(Json(run.view(true)))
}

/// Cancels a run: one awaiting approval never runs; a running one's hosts are told to kill its
/// process groups, and those not started yet never start.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", params(("id" = String, Path, description = "run-N")), request_body = RunDecision,
    responses((status = 200, body = RunView), (status = 404, body = endstate_api::Problem), (status = 409, description = "already ended", body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    JsonBody(decision): JsonBody<RunDecision>,
) -> Result<Json<RunView>, ApiError> {
    let (n, system) = find(&state, &id)?;
    authorize(&actor, Verb::Operate, Some(&system))?;
    let now = state.now_ms();
    let (run, running_hosts) = {
        let runs = state.runs();
        let mut inner = runs.lock();
        let run = inner.runs.get_mut(&n).ok_or_else(|| not_found(&id))?;
        if !run.state.open() {
            return Err(ApiError::Conflict(format!(
                "{id} already ended ({})",
                run.state.as_str()
            )));
        }
        let mut running = Vec::new();
        for (host, h) in &mut run.hosts {
            match h.state {
                HostState::Pending => {
                    h.state = HostState::Cancelled;
                    h.detail = "cancelled before it started".to_owned();
                }
                HostState::Running => running.push(host.clone()),
                _ => {}
            }
        }
        run.state = RunState::Cancelled;
        if running.is_empty() {
            run.finished_ms = Some(now);
        }
        (run.clone(), running)
    };
    if let Some(hub) = state.hub() {
        for host in &running_hosts {
            if let Some(conn) = hub.connection(host) {
                let _ = conn
                    .tx
                    .try_send(FromServer::CancelAction(CancelAction { run: run.id() }));
            }
        }
    }
    let why = decision.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    state
        .store()
        .append_events(vec![run.event(
            now,
            |run_id, action_name| {
                endstate_events::Event::ActionCancelled(endstate_events::ActionCancelled {
                    run: run_id,
                    action: action_name,
                    reason: decision.reason.clone(),
                    killed_on: running_hosts.clone(),
                })
            },
            &actor.name,
            format!(
                "{} cancelled {} of {}{}{why}",
                actor.name,
                run.id(),
                run.key(),
                if running_hosts.is_empty() {
                    String::new()
                } else {
                    format!(" (killing it on {})", running_hosts.join(", "))
                }
            ),
        )])
        .await?;
    state.written();
    state.runs().wake.notify_waiters();
    Ok(Json(run.view(true)))
}

/// `GET /v1/runs` parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RunsParams {
    /// Only this system's runs.
    #[serde(default)]
    pub(crate) system: Option<String>,
    /// Only runs of this action.
    #[serde(default)]
    pub(crate) action: Option<String>,
    /// At most this many, newest first (default 50, at most 1000).
    #[serde(default, deserialize_with = "crate::extract::limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
}

/// Recent runs, newest first, without their output: "did someone just do that already?".
#[utoipa::path(get, path = "/v1/runs", params(RunsParams), responses((status = 200, body = Vec<RunView>)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Params(params): Params<RunsParams>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    authorize(&actor, Verb::Read, params.system.as_deref())?;
    let limit = params.limit.unwrap_or(50) as usize;
    let runs = state.runs();
    let inner = runs.lock();
    Ok(Json(
        inner
            .runs
            .values()
            .rev()
            .filter(|r| params.system.as_ref().is_none_or(|s| *s == r.system))
            .filter(|r| params.action.as_ref().is_none_or(|a| *a == r.action))
            .take(limit)
            .map(|r| r.view(false))
            .collect(),
    ))
}

/// One run with each host's output so far.
#[utoipa::path(get, path = "/v1/runs/{id}", params(("id" = String, Path, description = "run-N")),
    responses((status = 200, body = RunView), (status = 404, body = endstate_api::Problem)), security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let (n, _) = find(&state, &id)?;
    let runs = state.runs();
    let inner = runs.lock();
    inner
        .runs
        .get(&n)
        .map(|r| Json(r.view(true)))
        .ok_or_else(|| not_found(&id))
}

/// The run's number and its system, or why there is none.
fn find(state: &AppState, id: &str) -> Result<(u64, String), ApiError> {
    let n = parse_run_id(id).ok_or_else(|| ApiError::bad_field("id", format!("{id:?} is not a run id (run-N)")))?;
    let system = state.runs().lock().runs.get(&n).map(|r| r.system.clone());
    system.map(|system| (n, system)).ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no run {id}; `endstate runs` lists them"))
}

// === the driver ===

fn spawn_driver(state: &AppState, n: u64) {
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(error) = drive(&state, n).await {
            tracing::error!(run = n, error = %crate::chain(&error), "Action run driver failed.");
        }
    });
}

/// Sends the run to its hosts, `concurrency` at a time, watches for lost hosts, and finishes the
/// run when every host has an end.
async fn drive(state: &AppState, n: u64) -> Result<(), ApiError> {
    let runs = state.runs();
    // Looking for lost hosts asks the hub about every running host: at most every `SWEEP_MS`,
    // not on each of thousands of results (each wakes the driver), so a wake-up stays cheap.
    const SWEEP_MS: i64 = 500;
    let mut swept_ms = state.now_ms();
    let mut signatures: BTreeMap<u64, String> = BTreeMap::new();
    loop {
        let wake = runs.wake.notified();
        let now = state.now_ms();
        let sweep = now - swept_ms >= SWEEP_MS;
        if sweep {
            swept_ms = now;
        }
        let mut sends = Vec::new();
        let mut events = Vec::new();
        let many_hosts;
        let finished = {
            let mut inner = runs.lock();
            let Some(run) = inner.runs.get_mut(&n) else {
                return Ok(());
            };
            let hub = state.hub();
            let key = run.key();
            let id = run.id();
            let timeout_ms = run.timeout_ms;
            let mut lost = Vec::new();
            for (host, h) in &mut run.hosts {
                if !sweep || h.state != HostState::Running {
                    continue;
                }
                let connected = hub.as_ref().is_some_and(|hub| hub.connection(host).is_some());
                let reason = if !connected {
                    Some("the host disconnected while it ran; its result comes if it reconnects".to_owned())
                } else if now > h.since_ms.saturating_add(timeout_ms).saturating_add(RESULT_GRACE_MS) {
                    Some(format!(
                        "no result within its timeout of {} s and {} s more",
                        timeout_ms / 1000,
                        RESULT_GRACE_MS / 1000
                    ))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    h.state = HostState::Lost;
                    h.detail.clone_from(&reason);
                    lost.push((host.clone(), reason));
                }
            }
            for (host, reason) in lost {
                events.push(NewEvent {
                    host: Some(host.clone()),
                    ..run.event(
                        now,
                        |run_id, action_name| {
                            endstate_events::Event::ActionHostLost(endstate_events::ActionHostLost {
                                run: run_id,
                                action: action_name,
                                reason: reason.clone(),
                            })
                        },
                        "server",
                        format!("{id} of {key} on {host}: {reason}"),
                    )
                });
            }
            if run.state == RunState::Running {
                let mut running = run.hosts.values().filter(|h| h.state == HostState::Running).count();
                let pending: Vec<String> = run
                    .hosts
                    .iter()
                    .filter(|(_, h)| h.state == HostState::Pending)
                    .map(|(host, _)| host.clone())
                    .collect();
                for host in pending {
                    if running >= run.concurrency {
                        break;
                    }
                    let h = run.hosts.get_mut(&host).expect("listed above");
                    let Some(hub) = hub.as_ref() else { break };
                    match hub.action_generation(&host, &key) {
                        Ok(generation) => {
                            h.state = HostState::Running;
                            h.since_ms = now;
                            running += 1;
                            sends.push((
                                host.clone(),
                                RunAction {
                                    run: id.clone(),
                                    action: key.clone(),
                                    generation: Generation(generation),
                                    params: run.params.clone(),
                                    signature: String::new(),
                                },
                            ));
                        }
                        Err(reason) if now > h.since_ms.saturating_add(CATALOGUE_WAIT_MS) => {
                            h.state = HostState::Lost;
                            h.detail = format!("not started: {reason}");
                            events.push(NewEvent {
                                host: Some(host.clone()),
                                ..run.event(
                                    now,
                                    |run_id, action_name| {
                                        endstate_events::Event::ActionHostLost(endstate_events::ActionHostLost {
                                            run: run_id,
                                            action: action_name,
                                            reason: reason.to_string(),
                                        })
                                    },
                                    "server",
                                    format!("{id} of {key} on {host} did not start: {reason}"),
                                )
                            });
                        }
                        // Not connected yet, or its catalogue is on its way: look again soon.
                        Err(_) => {}
                    }
                }
            }
            many_hosts = run.hosts.len() > 100;
            let all_done = run.hosts.values().all(|h| h.state.done());
            if all_done && run.finished_ms.is_none() {
                if run.state == RunState::Running {
                    run.state = if run.hosts.values().all(|h| h.state == HostState::Succeeded) {
                        RunState::Succeeded
                    } else {
                        RunState::Failed
                    };
                }
                run.finished_ms = Some(now);
                let hosts = run
                    .hosts
                    .iter()
                    .map(|(host, h)| (host.clone(), h.state.as_str().to_owned()))
                    .collect();
                events.push(run.event(
                    now,
                    |run_id, action_name| {
                        endstate_events::Event::ActionFinished(endstate_events::ActionFinished {
                            run: run_id,
                            action: action_name,
                            state: run.state.as_str().to_owned(),
                            hosts: Some(hosts),
                        })
                    },
                    "server",
                    format!("{id} of {key} {}: {}", run.state.as_str(), run.summary()),
                ));
                true
            } else {
                all_done
            }
        };
        if let Some(hub) = state.hub() {
            for (host, mut request) in sends {
                // Signed by the CA the agent pinned at enrolment; hosts at the same generation
                // share a signature.
                request.signature = match signatures.get(&request.generation.0) {
                    Some(signature) => signature.clone(),
                    None => {
                        let signature =
                            crate::auth::hex(&hub.tls.ca.sign_message(&request.signed_bytes()).map_err(|error| {
                                ApiError::Internal(format!("signing a run request failed: {error}"))
                            })?);
                        signatures.insert(request.generation.0, signature.clone());
                        signature
                    }
                };
                let sent = hub
                    .connection(&host)
                    .is_some_and(|conn| conn.tx.try_send(FromServer::RunAction(request)).is_ok());
                if !sent {
                    // Its link is full or gone: the next round sees it lost (not connected) or retries.
                    if let Some(h) = runs.lock().runs.get_mut(&n).and_then(|r| r.hosts.get_mut(&host)) {
                        h.state = HostState::Pending;
                    }
                }
            }
        }
        if !events.is_empty() {
            state.store().append_events(events).await?;
            state.written();
        }
        if finished {
            return Ok(());
        }
        tokio::select! {
            () = wake => {
                // A run on many hosts gets a result per host: let a few gather before the next
                // pass over all of them, rather than a pass per result.
                if many_hosts {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

// === from the agents ===

/// The timeline event for a result an agent reported; stored with the agent's observations.
pub(crate) fn result_event(state: &AppState, host: &str, at: i64, result: &ActionResult) -> NewEvent {
    let system = result
        .action
        .split_once('/')
        .map_or_else(String::new, |(s, _)| s.to_owned());
    let state_word = HostState::of(result.outcome).as_str();
    let how = match (result.exit_code, result.signal) {
        (Some(code), _) => format!(", exit code {code}"),
        (None, Some(signal)) => format!(", signal {signal}"),
        (None, None) => String::new(),
    };
    let detail = if result.detail.is_empty() {
        String::new()
    } else {
        format!(": {}", first_line(&result.detail))
    };
    let known = parse_run_id(&result.run).is_some_and(|n| state.runs().lock().runs.contains_key(&n));
    let (kind, summary): (fn(endstate_events::ActionHostResult) -> endstate_events::Event, String) =
        if result.outcome == ActionOutcome::Refused {
            (
                endstate_events::Event::ActionRefused,
                format!(
                    "the agent on {host} refused {} of {}{detail}{}",
                    result.run,
                    result.action,
                    if known {
                        ""
                    } else {
                        " (a run this server never asked for)"
                    }
                ),
            )
        } else {
            (
                endstate_events::Event::ActionHostFinished,
                format!(
                    "{} of {} on {host} {state_word}{how} after {} ms{detail}",
                    result.run, result.action, result.duration_ms
                ),
            )
        };
    NewEvent {
        systems: if system.is_empty() { Vec::new() } else { vec![system] },
        host: Some(host.to_owned()),
        actor: Some(format!("agent:{host}")),
        ..NewEvent::of(
            at,
            &kind(endstate_events::ActionHostResult {
                run: result.run.clone(),
                action: result
                    .action
                    .split_once('/')
                    .map_or(result.action.as_str(), |(_, a)| a)
                    .to_owned(),
                state: state_word.to_owned(),
                exit_code: result.exit_code,
                signal: result.signal,
                duration_ms: result.duration_ms,
                detail: result.detail.clone(),
                output: tail_of(&result.output, EVENT_OUTPUT_BYTES),
            }),
            summary,
        )
    }
}

/// Takes results an agent reported (already stored with their events): each host's end, and the
/// drivers are woken.
pub(crate) fn ingest(state: &AppState, host: &str, results: &[ActionResult]) {
    if results.is_empty() {
        return;
    }
    let runs = state.runs();
    {
        let mut inner = runs.lock();
        for result in results {
            let Some(run) = parse_run_id(&result.run).and_then(|n| inner.runs.get_mut(&n)) else {
                continue;
            };
            let Some(h) = run.hosts.get_mut(host) else { continue };
            // A host's first end stands (a lost host may still report); the timeline has the rest.
            if h.state.done() && h.state != HostState::Lost {
                continue;
            }
            h.state = HostState::of(result.outcome);
            h.exit_code = result.exit_code;
            h.signal = result.signal;
            h.duration_ms = Some(result.duration_ms);
            h.detail.clone_from(&result.detail);
            // The result's tail is complete; live pieces may have been dropped.
            if result.output.len() as u64 >= h.output_bytes || h.output.is_empty() {
                h.output_bytes = h.output_bytes.max(result.output.len() as u64);
                h.output.clone_from(&result.output);
            }
        }
    }
    runs.wake.notify_waiters();
}

/// A piece of a running action's output, as it comes.
pub(crate) fn output(state: &AppState, host: &str, piece: ActionOutput) {
    let runs = state.runs();
    let mut inner = runs.lock();
    let Some(run) = parse_run_id(&piece.run).and_then(|n| inner.runs.get_mut(&n)) else {
        return;
    };
    let Some(h) = run.hosts.get_mut(host) else { return };
    if h.state.done() {
        return;
    }
    h.output.push_str(&piece.data);
    h.output_bytes += piece.data.len() as u64;
    if h.output.len() > KEPT_OUTPUT_BYTES {
        h.output = tail_of(&h.output, KEPT_OUTPUT_BYTES);
    }
}

// === at start ===

/// Rebuilds the runs from the timeline: numbers are never reused, runs awaiting approval still
/// wait, and runs that were going are finished as `interrupted`.
pub(crate) async fn load_runs(state: &AppState) -> Result<(), ApiError> {
    let mut runs: BTreeMap<u64, Run> = BTreeMap::new();
    let mut highest = 0;
    crate::record::replay_events(state, "action.", |event| {
        let Some(typed) = event.typed() else { return };
        let Some(n) = run_of(&typed).and_then(parse_run_id) else {
            return;
        };
        highest = highest.max(n);
        replay(&mut runs, n, event, typed);
    })
    .await?;
    let now = state.now_ms();
    let mut events = Vec::new();
    for run in runs.values_mut() {
        if run.state == RunState::Running || (run.state == RunState::Cancelled && run.finished_ms.is_none()) {
            for h in run.hosts.values_mut() {
                if !h.state.done() {
                    h.state = HostState::Lost;
                    h.detail = "the server restarted while it ran; its result is recorded if it comes".to_owned();
                }
            }
            if run.state == RunState::Running {
                run.state = RunState::Interrupted;
            }
            run.finished_ms = Some(now);
            let finished = run.state.as_str().to_owned();
            events.push(run.event(
                now,
                |run_id, action_name| {
                    endstate_events::Event::ActionFinished(endstate_events::ActionFinished {
                        run: run_id,
                        action: action_name,
                        state: finished,
                        hosts: None,
                    })
                },
                "server",
                format!(
                    "{} of {} {}: {}",
                    run.id(),
                    run.key(),
                    run.state.as_str(),
                    run.summary()
                ),
            ));
        }
    }
    if !events.is_empty() {
        state.store().append_events(events).await?;
    }
    let runs_state = state.runs();
    let mut inner = runs_state.lock();
    inner.highest = highest;
    inner.runs = runs;
    Ok(())
}

/// The run an event of a run names (`run-N`).
pub(crate) fn run_of(event: &Event) -> Option<&str> {
    match event {
        Event::ActionRequested(e) => Some(&e.run),
        Event::ActionApproved(e) => Some(&e.run),
        Event::ActionStarted(e) => Some(&e.run),
        Event::ActionCancelled(e) => Some(&e.run),
        Event::ActionHostLost(e) => Some(&e.run),
        Event::ActionFinished(e) => Some(&e.run),
        Event::ActionHostFinished(e) | Event::ActionRefused(e) => Some(&e.run),
        _ => None,
    }
}

fn replay(runs: &mut BTreeMap<u64, Run>, n: u64, event: &endstate_store::Event, typed: Event) {
    if let Event::ActionRequested(requested) = typed {
        runs.insert(
            n,
            Run {
                n,
                system: event.systems.first().cloned().unwrap_or_default(),
                action: requested.action,
                params: requested.params,
                reason: requested.reason,
                requested_by: event.actor.clone().unwrap_or_default(),
                requested_ms: event.time_ms,
                approved_by: None,
                state: if requested.engagement == "approval" {
                    RunState::AwaitingApproval
                } else {
                    RunState::Running
                },
                hosts: requested
                    .hosts
                    .into_iter()
                    .map(|h| {
                        (
                            h,
                            HostRun {
                                since_ms: event.time_ms,
                                ..HostRun::default()
                            },
                        )
                    })
                    .collect(),
                concurrency: usize::try_from(requested.concurrency).unwrap_or(1),
                timeout_ms: requested.timeout_ms,
                reentrant: requested.reentrant,
                finished_ms: None,
            },
        );
        return;
    }
    let Some(run) = runs.get_mut(&n) else { return };
    match typed {
        Event::ActionApproved(_) => {
            run.approved_by.clone_from(&event.actor);
            run.state = RunState::Running;
        }
        Event::ActionCancelled(_) => {
            run.state = RunState::Cancelled;
            for h in run.hosts.values_mut() {
                if h.state == HostState::Pending {
                    h.state = HostState::Cancelled;
                }
            }
        }
        Event::ActionHostLost(lost) => {
            if let Some(h) = event.host.as_ref().and_then(|host| run.hosts.get_mut(host)) {
                h.state = HostState::Lost;
                h.detail = lost.reason;
            }
        }
        Event::ActionHostFinished(result) | Event::ActionRefused(result) => {
            let Some(h) = event.host.as_ref().and_then(|host| run.hosts.get_mut(host)) else {
                return;
            };
            h.state = match result.state.as_str() {
                _ if event.kind == "action.refused" => HostState::Refused,
                "succeeded" => HostState::Succeeded,
                "timed_out" => HostState::TimedOut,
                "cancelled" => HostState::Cancelled,
                _ => HostState::Failed,
            };
            h.exit_code = result.exit_code;
            h.signal = result.signal;
            h.duration_ms = Some(result.duration_ms);
            h.detail = result.detail;
            h.output_bytes = result.output.len() as u64;
            h.output = result.output;
        }
        Event::ActionFinished(finished) => {
            run.finished_ms = Some(event.time_ms);
            run.state = match finished.state.as_str() {
                "succeeded" => RunState::Succeeded,
                "cancelled" => RunState::Cancelled,
                "interrupted" => RunState::Interrupted,
                _ => RunState::Failed,
            };
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use endstate_spec::Parameter;

    fn action() -> Action {
        let p = |kind, values: &[&str], pattern: Option<&str>, min, max, default, required| Parameter {
            kind,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            pattern: pattern.map(str::to_owned),
            min,
            max,
            default,
            required,
        };
        Action {
            name: "flush".into(),
            system: "shop".into(),
            description: String::new(),
            parameters: [
                (
                    "scope".to_owned(),
                    p(
                        ParameterType::Enum,
                        &["all", "sessions"],
                        None,
                        None,
                        None,
                        Some(ParamValue::String("all".into())),
                        false,
                    ),
                ),
                (
                    "age".to_owned(),
                    p(ParameterType::Integer, &[], None, Some(0), Some(60), None, false),
                ),
                (
                    "dry".to_owned(),
                    p(ParameterType::Boolean, &[], None, None, None, None, false),
                ),
                (
                    "ticket".to_owned(),
                    p(
                        ParameterType::String,
                        &[],
                        Some("[A-Z]+-[0-9]+"),
                        None,
                        None,
                        None,
                        true,
                    ),
                ),
            ]
            .into_iter()
            .collect(),
            command: vec!["/bin/true".into()],
            shell: false,
            targets: endstate_spec::Targets::Component("shop/api".into()),
            concurrency: 1,
            timeout: endstate_spec::Duration::from_secs(60),
            allow_during_rollout: false,
            reentrant: false,
            engagement: Engagement::Direct,
            escalate_to: None,
            rate_limit: endstate_spec::RateLimit::default(),
        }
    }

    fn given(pairs: &[(&str, serde_json::Value)]) -> BTreeMap<String, serde_json::Value> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    #[test]
    fn values_are_typed_checked_and_defaulted() {
        let resolved = resolve_params(
            &action(),
            &given(&[("ticket", "OPS-12".into()), ("age", "5".into()), ("dry", true.into())]),
        )
        .unwrap();
        let expected: BTreeMap<String, String> =
            [("age", "5"), ("dry", "true"), ("scope", "all"), ("ticket", "OPS-12")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        assert_eq!(resolved, expected);
    }

    #[test]
    fn every_bad_value_is_named_by_its_field() {
        let Err(ApiError::Invalid { errors, .. }) = resolve_params(
            &action(),
            &given(&[
                ("scope", "everything".into()),
                ("age", 61.into()),
                ("dry", "yes".into()),
                ("cmd", "rm".into()),
            ]),
        ) else {
            panic!("accepted");
        };
        let fields: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.message.as_str())).collect();
        assert!(
            fields
                .iter()
                .any(|(f, m)| *f == "params.cmd" && m.contains("it has age, dry, scope, ticket")),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|(f, m)| *f == "params.scope" && m.contains("not one of all, sessions")),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|(f, m)| *f == "params.age" && m.contains("outside 0..=60")),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|(f, m)| *f == "params.dry" && m.contains("not true or false")),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|(f, m)| *f == "params.ticket" && m.contains("required")),
            "{fields:?}"
        );
    }

    #[test]
    fn a_pattern_must_match_the_whole_value() {
        let bad = resolve_params(&action(), &given(&[("ticket", "see OPS-12; rm -rf /".into())]));
        assert!(
            matches!(bad, Err(ApiError::Invalid { errors, .. }) if errors[0].message.contains("does not match the pattern"))
        );
    }

    #[test]
    fn a_summary_names_the_hosts_that_did_not_succeed() {
        let mut run = Run {
            n: 7,
            system: "shop".into(),
            action: "flush".into(),
            params: BTreeMap::new(),
            reason: None,
            requested_by: "alice".into(),
            requested_ms: 0,
            approved_by: None,
            state: RunState::Failed,
            hosts: BTreeMap::new(),
            concurrency: 1,
            timeout_ms: 1000,
            reentrant: false,
            finished_ms: Some(1),
        };
        run.hosts.insert(
            "a".into(),
            HostRun {
                state: HostState::Succeeded,
                exit_code: Some(0),
                ..HostRun::default()
            },
        );
        run.hosts.insert(
            "b".into(),
            HostRun {
                state: HostState::Failed,
                exit_code: Some(2),
                ..HostRun::default()
            },
        );
        run.hosts.insert(
            "c".into(),
            HostRun {
                state: HostState::Lost,
                detail: "the host disconnected while it ran".into(),
                ..HostRun::default()
            },
        );
        assert_eq!(
            run.summary(),
            "1 of 3 hosts succeeded; b failed (exit code 2), c lost (the host disconnected while it ran)"
        );
    }
}
