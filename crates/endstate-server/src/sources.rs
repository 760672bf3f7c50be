//! Git sources: a branch of a repository followed as desired state. Each new head that touches
//! the source's paths becomes a revision (composed with what the other origins own, see
//! [`crate::compose`]) and its change; a commit that cannot be applied is refused, with every
//! problem located, and the revision in force stays.
//!
//! Sources live on the timeline (`source.added`, `source.removed`), like silences: read back at
//! start. What a source last handled is `source.commit`'s. A poller fetches every repository
//! at its sources' shortest interval, once per repository per round however many sources follow
//! it; `POST /v1/sources/{name}/sync` runs a round at once. Fetching and reading are gix's
//! ([`endstate_git`]), on a blocking thread.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use endstate_api::{AddSource, SourceView};
use endstate_events::{Event, SourceCommitSeen, SourceDefinition, SourceFailed, SourceRemoved};
use endstate_git::{CommitInfo, Credentials, GitError, Mirrors};
use endstate_spec::{DesiredState, SourceCommit, SourceFile};
use endstate_store::NewEvent;

use crate::AppState;
use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;
use crate::extract::{JsonBody, Segment};

/// The default fetch interval.
const DEFAULT_INTERVAL_MS: u64 = 30_000;
/// The shortest fetch interval.
const MIN_INTERVAL_MS: u64 = 1_000;
/// The most sources one server follows.
const MAX_SOURCES: usize = 1_000;
/// How many superseded commits a `source.commit` lists.
const MAX_SUPERSEDED: usize = 50;
/// How many webhook delivery ids are remembered against replays.
const MAX_DELIVERIES: usize = 10_000;
/// After a failed fetch, the next is tried after this long, doubling up to the interval's ten times.
const RETRY_FIRST_MS: u64 = 1_000;

/// The sources this server follows, and what it last saw of each.
pub(crate) struct Sources {
    mirrors: Mirrors,
    inner: Mutex<BTreeMap<String, Followed>>,
    /// Fetches made, by repository (redacted URL).
    fetches: Mutex<BTreeMap<String, u64>>,
    /// One round at a time (the poller's or a sync's).
    round: tokio::sync::Mutex<()>,
    /// Wakes the poller (a source was added, a webhook called).
    wake: tokio::sync::Notify,
    /// The delivery ids of the webhook calls accepted lately, oldest first: a replay is refused.
    deliveries: Mutex<std::collections::VecDeque<String>>,
}

/// One source and what this server saw of it.
#[derive(Clone, Debug)]
struct Followed {
    definition: SourceDefinition,
    /// When it is fetched next (ms since the epoch).
    due_ms: i64,
    /// Failed fetches in a row (for the backoff).
    failures: u32,
    head: Option<String>,
    handled: Option<String>,
    /// What became of the commit handled last (`applied`, `refused`…).
    outcome: Option<String>,
    fetched_ms: Option<i64>,
    error: Option<String>,
    problems: Vec<String>,
}

impl Sources {
    /// `trusted`: the CA certificates (DER) trusted for HTTPS besides the system's roots.
    pub(crate) fn new(data_dir: &std::path::Path, trusted: Vec<Vec<u8>>) -> Sources {
        Sources {
            mirrors: Mirrors::new(endstate_git::mirrors_dir(data_dir)).trusting(trusted),
            inner: Mutex::new(BTreeMap::new()),
            fetches: Mutex::new(BTreeMap::new()),
            round: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            deliveries: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Followed>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fetches_of(&self, repository: &str) -> u64 {
        self.fetches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(repository)
            .copied()
            .unwrap_or_default()
    }
}

/// Takes back the sources and what each last handled from the timeline, at start.
pub(crate) async fn load(state: &AppState) -> Result<(), ApiError> {
    let mut followed: BTreeMap<String, Followed> = BTreeMap::new();
    crate::record::replay_events(state, "source.", |event| match event.typed() {
        Some(Event::SourceAdded(definition)) => {
            followed.insert(definition.name.clone(), fresh(definition, state.now_ms()));
        }
        Some(Event::SourceRemoved(gone)) => {
            followed.remove(&gone.name);
        }
        Some(Event::SourceCommit(seen)) => {
            if let Some(f) = followed.get_mut(&seen.name) {
                f.handled = Some(seen.commit.clone());
                f.outcome = Some(seen.outcome.clone());
                f.problems = seen.problems.clone();
            }
        }
        Some(Event::SourceFailed(failed)) => {
            if let Some(f) = followed.get_mut(&failed.name) {
                f.error = Some(failed.reason.clone());
            }
        }
        Some(Event::SourceRecovered(back)) => {
            if let Some(f) = followed.get_mut(&back.name) {
                f.error = None;
            }
        }
        _ => {}
    })
    .await?;
    *state.sources().lock() = followed;
    Ok(())
}

fn fresh(definition: SourceDefinition, now_ms: i64) -> Followed {
    Followed {
        definition,
        due_ms: now_ms,
        failures: 0,
        head: None,
        handled: None,
        outcome: None,
        fetched_ms: None,
        error: None,
        problems: Vec::new(),
    }
}

/// Fetches the repositories whose sources are due, until the server stops.
pub(crate) async fn run(state: AppState, mut stopping: tokio::sync::watch::Receiver<bool>) {
    loop {
        let next = {
            let sources = state.sources().lock();
            sources.values().map(|f| f.due_ms).min()
        };
        let wait_ms = match next {
            Some(due) => u64::try_from(due - state.now_ms()).unwrap_or(0),
            None => 3_600_000,
        };
        if wait_ms > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait_ms.min(3_600_000))) => {}
                () = state.sources().wake.notified() => {}
                _ = stopping.changed() => {}
            }
        }
        if *stopping.borrow() {
            return;
        }
        if let Err(error) = round(&state, None).await {
            tracing::warn!(%error, "A round of the Git sources failed.");
        }
    }
}

/// Fetches each repository with a due source (or `only`'s, due or not) once, then handles the
/// head of every source of it: a fetch serves every source of its repository, so there is one
/// fetch per repository per round however many sources follow it.
async fn round(state: &AppState, only: Option<&str>) -> Result<(), ApiError> {
    let _round = state.sources().round.lock().await;
    let now = state.now_ms();
    let repository_of = |f: &Followed| (f.definition.repository.clone(), f.definition.credentials_file.clone());
    let mut by_repository: BTreeMap<(String, Option<String>), Vec<Followed>> = BTreeMap::new();
    {
        let sources = state.sources().lock();
        let fetched: std::collections::BTreeSet<(String, Option<String>)> = sources
            .values()
            .filter(|f| match only {
                Some(name) => f.definition.name == name,
                None => f.due_ms <= now,
            })
            .map(repository_of)
            .collect();
        for followed in sources.values() {
            let key = repository_of(followed);
            if fetched.contains(&key) {
                by_repository.entry(key).or_default().push(followed.clone());
            }
        }
    }
    for ((repository, credentials_file), group) in by_repository {
        let fetched = fetch(state, &repository, credentials_file.as_deref()).await;
        for followed in group {
            let outcome = match &fetched {
                Ok(branches) => handle(state, &followed, branches).await,
                Err(reason) => Err(reason.clone()),
            };
            settle(state, &followed, outcome).await?;
        }
    }
    Ok(())
}

/// Fetches a repository on a blocking thread: its branches' heads, or why not.
async fn fetch(
    state: &AppState,
    repository: &str,
    credentials_file: Option<&str>,
) -> Result<BTreeMap<String, String>, String> {
    let credentials = match credentials_file {
        Some(path) => Some(read_credentials(path)?),
        None => None,
    };
    let mirrors = state.sources().mirrors.clone();
    let url = repository.to_owned();
    let result = tokio::task::spawn_blocking(move || mirrors.fetch(&url, credentials.as_ref()))
        .await
        .map_err(|error| format!("the fetch of {} stopped: {error}", endstate_git::redact(repository)))?;
    *state
        .sources()
        .fetches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(endstate_git::redact(repository))
        .or_default() += 1;
    result.map_err(|error| error.to_string())
}

fn read_credentials(path: &str) -> Result<Credentials, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read the credentials file {path}: {error}"))?;
    Credentials::parse(&text)
        .ok_or_else(|| format!("the credentials file {path} does not hold one line `user:password`"))
}

/// What became of a source's new head.
struct Handled {
    head: String,
    /// The `source.commit` to record, when the head was not handled before.
    seen: Option<(SourceCommitSeen, Vec<String>)>,
}

/// Handles the head of a source's branch: nothing when it was handled before; else applies it
/// (or says why not).
async fn handle(state: &AppState, followed: &Followed, branches: &BTreeMap<String, String>) -> Result<Handled, String> {
    let definition = &followed.definition;
    let name = definition.name.as_str();
    let Some(head) = branches.get(&definition.branch).cloned() else {
        let known: Vec<&str> = branches.keys().map(String::as_str).collect();
        return Err(GitError::NoSuchBranch {
            url: definition.repository.clone(),
            branch: definition.branch.clone(),
            known: known.join(", "),
        }
        .to_string());
    };
    if followed.handled.as_deref() == Some(head.as_str()) {
        return Ok(Handled { head, seen: None });
    }
    let latest = state.latest_desired().await.map_err(|e| e.to_string())?;
    let previous = latest.as_ref().map(|(_, d)| d.as_ref());
    let held = previous.and_then(|d| d.sources.get(name)).map(|c| c.commit.clone());
    // Commits since the last one handled are superseded by the head; whether the head changes
    // anything is against the commit the latest revision holds.
    let since = followed.handled.clone().or_else(|| held.clone());
    let mirrors = state.sources().mirrors.clone();
    let (url, paths) = (definition.repository.clone(), definition.paths.clone());
    let (head_id, held_id) = (head.clone(), held.clone());
    let read = tokio::task::spawn_blocking(move || -> Result<_, GitError> {
        let commit = mirrors.commit(&url, &head_id)?;
        let (between, rewritten) = match &since {
            Some(since) if *since != head_id => {
                let (commits, ancestor) = mirrors.between(&url, since, &head_id, MAX_SUPERSEDED + 1)?;
                (commits, (!ancestor).then(|| since.clone()))
            }
            _ => (Vec::new(), None),
        };
        // A held commit gone from the repository (history rewritten) compares as different.
        let untouched = match &held_id {
            Some(held) => match mirrors.path_ids(&url, held, &paths) {
                Ok(ids) => ids == mirrors.path_ids(&url, &head_id, &paths)?,
                Err(_) => false,
            },
            None => false,
        };
        let files = if untouched {
            Vec::new()
        } else {
            mirrors.files(&url, &head_id, &paths)?
        };
        Ok((commit, between, rewritten, untouched, files))
    })
    .await
    .map_err(|error| format!("reading {} stopped: {error}", definition.repository))?
    .map_err(|error| error.to_string())?;
    let (commit, between, rewritten_from, untouched, files) = read;
    let superseded: Vec<String> = between
        .iter()
        .filter(|c| c.id != head)
        .take(MAX_SUPERSEDED)
        .map(|c| format!("{} {}", c.id, c.subject()))
        .collect();
    let mut seen = seen_of(definition, &commit, superseded, rewritten_from);
    // A head whose paths hold what the latest revision already has of the source changes nothing.
    if untouched {
        seen.outcome = "untouched".into();
        let systems = previous
            .map(|d| crate::compose::owned_systems(d, name))
            .unwrap_or_default();
        return Ok(Handled {
            head,
            seen: Some((seen, systems)),
        });
    }
    let composed = compose(state, definition, previous, &commit, files).await;
    let desired = match composed {
        Ok(desired) => desired,
        Err(problems) => {
            seen.outcome = "refused".into();
            seen.problems = problems;
            let systems = previous
                .map(|d| crate::compose::owned_systems(d, name))
                .unwrap_or_default();
            return Ok(Handled {
                head,
                seen: Some((seen, systems)),
            });
        }
    };
    let mut systems = crate::compose::owned_systems(&desired, name);
    if let Some(previous) = previous {
        systems.extend(crate::compose::owned_systems(previous, name));
        systems.sort();
        systems.dedup();
    }
    if previous == Some(&desired) {
        seen.outcome = "unchanged".into();
        return Ok(Handled {
            head,
            seen: Some((seen, systems)),
        });
    }
    let message = format!("{} ({} of {})", commit.subject(), short(&commit.id), name);
    let (revision, _change) = crate::revisions::submit_desired(
        state,
        &format!("source:{name}"),
        &desired,
        &message,
        format!("git:{name}@{}", commit.id),
        Some(latest.as_ref().map_or(endstate_types::RevisionId(0), |(id, _)| *id)),
        &endstate_plan::PlanOptions::default(),
    )
    .await
    .map_err(|error| {
        format!(
            "the revision of commit {} could not be stored: {error}",
            short(&commit.id)
        )
    })?;
    seen.outcome = "applied".into();
    seen.revision = Some(revision.id.0);
    Ok(Handled {
        head,
        seen: Some((seen, systems)),
    })
}

/// The desired state of the latest revision with the source's files of this commit, or every
/// problem, located.
async fn compose(
    state: &AppState,
    definition: &SourceDefinition,
    previous: Option<&DesiredState>,
    commit: &CommitInfo,
    files: Vec<endstate_git::File>,
) -> Result<DesiredState, Vec<String>> {
    let name = definition.name.as_str();
    if files.is_empty() {
        return Err(vec![format!(
            "no spec file (*.yaml, *.yml) under {} at {}: a source declares at least one system (remove the source to let its systems go)",
            paths_text(&definition.paths),
            short(&commit.id)
        )]);
    }
    let files: Vec<SourceFile> = files
        .into_iter()
        .map(|f| SourceFile {
            path: f.path,
            text: f.content,
        })
        .collect();
    // Parsed once: who owns what is read from the same parse that is validated.
    let mut parsed = endstate_spec::ParsedSpec::parse(files);
    let declarations = parsed.declarations();
    let refusals = crate::compose::owned_elsewhere(&declarations, previous, Some(name), |owner| {
        format!("the Git source {owner}")
    });
    if !refusals.is_empty() {
        return Err(refusals.iter().map(crate::compose::Refusal::located).collect());
    }
    // Stand-ins for the systems of the other origins; a system these files declare is the
    // source's (adopted from the API when the API had it).
    let declared: std::collections::BTreeSet<String> = declarations
        .into_iter()
        .filter(|d| d.kind == "System")
        .map(|d| d.name)
        .collect();
    let (stand_in, stand_ins) = crate::compose::stand_ins(previous, |system| {
        previous.and_then(|p| crate::compose::system_owner(p, system)) != Some(name) && !declared.contains(system)
    });
    if let Some(stand_in) = stand_in {
        parsed.add(stand_in);
    }
    let hosts = crate::blueprint::hosts_in_service(state)
        .await
        .map_err(|error| vec![error.to_string()])?;
    let loaded = parsed.validate(&hosts);
    let Some(loaded_desired) = loaded.desired else {
        return Err(loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("{}:{}:{}: {}", d.file, d.line, d.column, d.message))
            .collect());
    };
    let source_commit = SourceCommit {
        repository: definition.repository.clone(),
        branch: definition.branch.clone(),
        commit: commit.id.clone(),
        author: commit.author.clone(),
        subject: commit.subject().to_owned(),
    };
    let desired = crate::compose::with_source(previous, name, loaded_desired, &stand_ins, source_commit);
    let dangling = crate::compose::dangling(&desired);
    if !dangling.is_empty() {
        return Err(dangling);
    }
    Ok(desired)
}

fn seen_of(
    definition: &SourceDefinition,
    commit: &CommitInfo,
    superseded: Vec<String>,
    rewritten_from: Option<String>,
) -> SourceCommitSeen {
    SourceCommitSeen {
        name: definition.name.clone(),
        repository: definition.repository.clone(),
        branch: definition.branch.clone(),
        commit: commit.id.clone(),
        author: commit.author.clone(),
        committer: commit.committer.clone(),
        message: commit.message.clone(),
        outcome: String::new(),
        revision: None,
        superseded,
        rewritten_from,
        problems: Vec::new(),
    }
}

/// Records what a round did for a source and when it is due again.
async fn settle(state: &AppState, followed: &Followed, outcome: Result<Handled, String>) -> Result<(), ApiError> {
    let name = followed.definition.name.clone();
    let now = state.now_ms();
    let mut events = Vec::new();
    let interval = followed.definition.interval_ms;
    match outcome {
        Ok(handled) => {
            if followed.error.is_some() {
                events.push(NewEvent {
                    actor: Some("server".into()),
                    ..NewEvent::of(
                        now,
                        &Event::SourceRecovered(SourceRemoved { name: name.clone() }),
                        format!("source {name}: {} is read again", followed.definition.repository),
                    )
                });
            }
            let mut problems = None;
            let mut outcome = None;
            if let Some((seen, systems)) = &handled.seen {
                outcome = Some(seen.outcome.clone());
                events.push(NewEvent {
                    systems: systems.clone(),
                    actor: Some(format!("source:{name}")),
                    ..NewEvent::of(now, &Event::SourceCommit(seen.clone()), commit_summary(seen))
                });
                problems = Some(seen.problems.clone());
            }
            if !events.is_empty() {
                state.store().append_events(events).await?;
                state.written();
            }
            let mut sources = state.sources().lock();
            if let Some(f) = sources.get_mut(&name) {
                f.head = Some(handled.head.clone());
                f.handled = Some(handled.head);
                f.fetched_ms = Some(now);
                f.error = None;
                f.failures = 0;
                f.due_ms = now + i64::try_from(interval).unwrap_or(i64::MAX / 2);
                if let Some(problems) = problems {
                    f.problems = problems;
                }
                if outcome.is_some() {
                    f.outcome = outcome;
                }
            }
        }
        Err(reason) => {
            if followed.error.as_deref() != Some(reason.as_str()) {
                events.push(NewEvent {
                    actor: Some("server".into()),
                    ..NewEvent::of(
                        now,
                        &Event::SourceFailed(SourceFailed {
                            name: name.clone(),
                            reason: reason.clone(),
                        }),
                        format!("source {name}: {reason}"),
                    )
                });
                state.store().append_events(events).await?;
                state.written();
            }
            let mut sources = state.sources().lock();
            if let Some(f) = sources.get_mut(&name) {
                f.failures = f.failures.saturating_add(1);
                // Retried with backoff: 1 s, 2 s, 4 s… up to the interval.
                let backoff = RETRY_FIRST_MS.saturating_mul(1 << f.failures.min(16).saturating_sub(1));
                f.due_ms = now + i64::try_from(backoff.min(interval)).unwrap_or(i64::MAX / 2);
                f.fetched_ms = Some(now);
                f.error = Some(reason);
            }
        }
    }
    Ok(())
}

fn commit_summary(seen: &SourceCommitSeen) -> String {
    let subject = seen.message.lines().next().unwrap_or_default();
    let commit = short(&seen.commit);
    let what = match seen.outcome.as_str() {
        "applied" => format!("applied as revision {}", seen.revision.unwrap_or_default()),
        "unchanged" => "declares what the latest revision has: nothing to apply".to_owned(),
        "untouched" => "changes nothing under the source's paths".to_owned(),
        _ => format!("refused: {}", seen.problems.join("; ")),
    };
    let mut text = format!(
        "source {}: commit {commit} \"{subject}\" by {} {what}",
        seen.name, seen.author
    );
    if !seen.superseded.is_empty() {
        text.push_str(&format!(
            "; supersedes {} commit(s) pushed with it",
            seen.superseded.len()
        ));
    }
    if let Some(from) = &seen.rewritten_from {
        text.push_str(&format!(
            "; history was rewritten: {} is no longer an ancestor",
            short(from)
        ));
    }
    text
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn paths_text(paths: &[String]) -> String {
    if paths.iter().all(String::is_empty) {
        "the repository".to_owned()
    } else {
        paths.join(", ")
    }
}

// === the API ===

/// Follow a branch of a Git repository as desired state.
#[utoipa::path(post, path = "/v1/sources", request_body = AddSource,
    responses((status = 201, body = SourceView), (status = 409, body = endstate_api::Problem), (status = 422, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn add(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JsonBody(request): JsonBody<AddSource>,
) -> Result<(StatusCode, Json<SourceView>), ApiError> {
    authorize(&actor, Verb::Administer, None)?;
    let definition = definition_of(&request)?;
    let now = state.now_ms();
    {
        let sources = state.sources().lock();
        if sources.contains_key(&definition.name) {
            return Err(ApiError::Conflict(format!(
                "a source named {} exists; remove it first",
                definition.name
            )));
        }
        if sources.len() >= MAX_SOURCES {
            return Err(ApiError::Unavailable(format!(
                "{MAX_SOURCES} sources exist; remove some first"
            )));
        }
    }
    let event = NewEvent {
        actor: Some(actor.name.clone()),
        ..NewEvent::of(
            now,
            &Event::SourceAdded(definition.clone()),
            format!(
                "source {} added by {}: {} branch {} ({}), every {} s",
                definition.name,
                actor.name,
                definition.repository,
                definition.branch,
                paths_text(&definition.paths),
                definition.interval_ms / 1000
            ),
        )
    };
    state.store().append_events(vec![event]).await?;
    state.written();
    state
        .sources()
        .lock()
        .insert(definition.name.clone(), fresh(definition.clone(), now));
    state.sources().wake.notify_one();
    let view = view_of(&state, &definition.name).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Whether `branch` is a branch name Git would take (`git check-ref-format --branch`, roughly).
fn valid_branch(branch: &str) -> bool {
    !(branch.is_empty()
        || branch.contains("..")
        || branch.starts_with('/')
        || branch.ends_with('/')
        || branch
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c)))
}

fn definition_of(request: &AddSource) -> Result<SourceDefinition, ApiError> {
    let name = request.name.trim();
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
    {
        return Err(ApiError::bad_field(
            "name",
            format!("{name:?}: lowercase letters, digits and `-`, at most 63 characters, not starting with `-`"),
        ));
    }
    let repository = request.repository.trim();
    let scheme_ok = ["file://", "http://", "https://", "ssh://", "git://"]
        .iter()
        .any(|scheme| repository.starts_with(scheme))
        || (repository.contains('@') && repository.contains(':') && !repository.contains("://"));
    if !scheme_ok {
        return Err(ApiError::bad_field(
            "repository",
            format!(
                "{:?}: expected a file://, http(s)://, ssh:// or git:// URL, or user@host:path",
                endstate_git::redact(repository)
            ),
        ));
    }
    if endstate_git::redact(repository) != repository && repository.contains("://") {
        let authority = repository
            .split_once("://")
            .map(|(_, r)| r.split('/').next().unwrap_or_default())
            .unwrap_or_default();
        if authority.split('@').next().is_some_and(|user| user.contains(':')) {
            return Err(ApiError::bad_field(
                "repository",
                "holds a password: put `user:password` in a file on the server and name it in credentials_file",
            ));
        }
    }
    let branch = request.branch.as_deref().unwrap_or("main").trim().to_owned();
    if !valid_branch(&branch) {
        return Err(ApiError::bad_field(
            "branch",
            format!("{branch:?} is not a branch name"),
        ));
    }
    let mut paths = Vec::new();
    for (idx, path) in request.paths.iter().enumerate() {
        let path = path.trim().trim_matches('/').trim_start_matches("./").to_owned();
        if !endstate_git::valid_path(&path) {
            return Err(ApiError::bad_field(
                format!("paths[{idx}]"),
                format!("{path:?}: a path inside the repository, relative, without `..`"),
            ));
        }
        paths.push(path);
    }
    if paths.is_empty() {
        paths.push(String::new());
    }
    let interval_ms = match &request.interval {
        None => DEFAULT_INTERVAL_MS,
        Some(text) => {
            let parsed = endstate_spec::Duration::parse(text)
                .map_err(|why| ApiError::bad_field("interval", format!("{text:?}: {why}")))?;
            let ms = u64::try_from(parsed.as_std().as_millis()).unwrap_or(u64::MAX);
            if ms < MIN_INTERVAL_MS {
                return Err(ApiError::bad_field("interval", format!("{text:?}: at least 1s")));
            }
            ms
        }
    };
    let credentials_file = match &request.credentials_file {
        None => None,
        Some(path) => {
            if !std::path::Path::new(path).is_absolute() {
                return Err(ApiError::bad_field(
                    "credentials_file",
                    format!("{path:?}: an absolute path on the server"),
                ));
            }
            read_credentials(path).map_err(|why| ApiError::bad_field("credentials_file", why))?;
            Some(path.clone())
        }
    };
    let webhook_secret_file = match &request.webhook_secret_file {
        None => None,
        Some(path) => {
            if !std::path::Path::new(path).is_absolute() {
                return Err(ApiError::bad_field(
                    "webhook_secret_file",
                    format!("{path:?}: an absolute path on the server"),
                ));
            }
            read_secret(path).map_err(|why| ApiError::bad_field("webhook_secret_file", why))?;
            Some(path.clone())
        }
    };
    Ok(SourceDefinition {
        name: name.to_owned(),
        repository: repository.to_owned(),
        branch,
        paths,
        interval_ms,
        credentials_file,
        webhook_secret_file,
    })
}

/// The sources, by name.
#[utoipa::path(get, path = "/v1/sources", responses((status = 200, body = [SourceView])), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Vec<SourceView>>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let names: Vec<String> = state.sources().lock().keys().cloned().collect();
    let mut views = Vec::with_capacity(names.len());
    for name in names {
        views.push(view_of(&state, &name).await?);
    }
    Ok(Json(views))
}

/// One source: what it follows, what it saw last, what it owns, and where it stands.
#[utoipa::path(get, path = "/v1/sources/{name}", params(("name" = String, Path, description = "the source")),
    responses((status = 200, body = SourceView), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(name): Segment,
) -> Result<Json<SourceView>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    Ok(Json(view_of(&state, &name).await?))
}

/// Fetch a source's repository now and handle its head, then answer where it stands.
#[utoipa::path(post, path = "/v1/sources/{name}/sync", params(("name" = String, Path, description = "the source")),
    responses((status = 200, body = SourceView), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn sync(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(name): Segment,
) -> Result<Json<SourceView>, ApiError> {
    authorize(&actor, Verb::Write, None)?;
    if !state.sources().lock().contains_key(&name) {
        return Err(ApiError::NotFound(format!("no source named {name:?}")));
    }
    round(&state, Some(&name)).await?;
    Ok(Json(view_of(&state, &name).await?))
}

/// Preview a branch of a source's repository before it is merged: fetch the repository, read
/// the branch's head under the source's paths, compose it as a commit of the source would be,
/// and plan it from the revision in force. Nothing is stored or applied; a commit that would be
/// refused says why, located.
#[utoipa::path(post, path = "/v1/sources/{name}/plan", params(("name" = String, Path, description = "the source")),
    request_body = endstate_api::SourcePlanRequest,
    responses((status = 200, body = endstate_api::SourcePlan), (status = 404, body = endstate_api::Problem),
        (status = 422, description = "no such branch, or bad options", body = endstate_api::Problem),
        (status = 503, description = "the repository could not be fetched", body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn plan(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(name): Segment,
    JsonBody(request): JsonBody<endstate_api::SourcePlanRequest>,
) -> Result<Json<endstate_api::SourcePlan>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let Some(followed) = state.sources().lock().get(&name).cloned() else {
        return Err(ApiError::NotFound(format!("no source named {name:?}")));
    };
    let mut definition = followed.definition;
    if let Some(branch) = &request.branch {
        let branch = branch.trim();
        if !valid_branch(branch) {
            return Err(ApiError::bad_field("ref", format!("{branch:?} is not a branch name")));
        }
        definition.branch = branch.to_owned();
    }
    let branches = {
        // One fetch of the mirror at a time.
        let _round = state.sources().round.lock().await;
        fetch(&state, &definition.repository, definition.credentials_file.as_deref())
            .await
            .map_err(ApiError::Unavailable)?
    };
    let Some(head) = branches.get(&definition.branch).cloned() else {
        let known: Vec<&str> = branches.keys().map(String::as_str).collect();
        return Err(ApiError::bad_field(
            "ref",
            format!(
                "{} has no branch {} (its branches: {})",
                definition.repository,
                definition.branch,
                known.join(", ")
            ),
        ));
    };
    let mirrors = state.sources().mirrors.clone();
    let (url, paths, id) = (definition.repository.clone(), definition.paths.clone(), head.clone());
    // The files' read may fail for the commit's own sake (a file over the limits): a problem of
    // the commit, as when it is handled, not of the server.
    let (commit, files) = tokio::task::spawn_blocking(move || -> Result<_, GitError> {
        Ok((mirrors.commit(&url, &id)?, mirrors.files(&url, &id, &paths)))
    })
    .await
    .map_err(|error| ApiError::Internal(format!("reading {} stopped: {error}", definition.repository)))?
    .map_err(|error| ApiError::Unavailable(error.to_string()))?;
    let latest = state.latest_desired().await?;
    let previous = latest.as_ref().map(|(_, d)| d.as_ref());
    let mut answer = endstate_api::SourcePlan {
        source: name.clone(),
        branch: definition.branch.clone(),
        commit: commit.id.clone(),
        author: commit.author.clone(),
        subject: commit.subject().to_owned(),
        problems: Vec::new(),
        preview: None,
    };
    let files = match files {
        Ok(files) => files,
        Err(error @ GitError::TooLarge { .. }) => {
            answer.problems = vec![error.to_string()];
            return Ok(Json(answer));
        }
        Err(error) => return Err(ApiError::Unavailable(error.to_string())),
    };
    let desired = match compose(&state, &definition, previous, &commit, files).await {
        Ok(desired) => desired,
        Err(problems) => {
            answer.problems = problems;
            return Ok(Json(answer));
        }
    };
    let latest_revision = latest.as_ref().map(|(id, _)| id.0);
    answer.preview =
        Some(crate::revisions::preview(&state, &desired, &request.options, latest_revision, Vec::new()).await?);
    Ok(Json(answer))
}

/// Stop following a source. Its systems stay as they are, owned by the API from then on (a
/// revision records it; nothing is stopped).
#[utoipa::path(delete, path = "/v1/sources/{name}", params(("name" = String, Path, description = "the source")),
    responses((status = 200, body = SourceView), (status = 404, body = endstate_api::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Segment(name): Segment,
) -> Result<Json<SourceView>, ApiError> {
    authorize(&actor, Verb::Administer, None)?;
    let _round = state.sources().round.lock().await;
    let view = view_of(&state, &name).await?;
    let now = state.now_ms();
    let event = NewEvent {
        systems: view.systems.clone(),
        actor: Some(actor.name.clone()),
        ..NewEvent::of(
            now,
            &Event::SourceRemoved(SourceRemoved { name: name.clone() }),
            format!(
                "source {name} removed by {}; its systems stay as they are, owned by the API: {}",
                actor.name,
                if view.systems.is_empty() {
                    "none".to_owned()
                } else {
                    view.systems.join(", ")
                }
            ),
        )
    };
    state.store().append_events(vec![event]).await?;
    state.sources().lock().remove(&name);
    if let Some((id, latest)) = state.latest_desired().await?
        && latest.sources.contains_key(&name)
    {
        let desired = crate::compose::without_source(&latest, &name);
        crate::revisions::submit_desired(
            &state,
            &actor.name,
            &desired,
            &format!("source {name} removed: its systems are the API's from now on"),
            format!("source-removed:{name}"),
            Some(id),
            &endstate_plan::PlanOptions::default(),
        )
        .await?;
    }
    state.written();
    Ok(Json(view))
}

async fn view_of(state: &AppState, name: &str) -> Result<SourceView, ApiError> {
    let Some(followed) = state.sources().lock().get(name).cloned() else {
        return Err(ApiError::NotFound(format!("no source named {name:?}")));
    };
    let latest = state.latest_desired().await?;
    let in_force = state.base().await?;
    let commit_in =
        |desired: Option<&DesiredState>| desired.and_then(|d| d.sources.get(name)).map(|c| c.commit.clone());
    let latest_commit = commit_in(latest.as_ref().map(|(_, d)| d.as_ref()));
    let in_force_commit = commit_in(in_force.as_ref().map(|(_, d)| d.as_ref()));
    let systems = latest
        .as_ref()
        .map(|(_, d)| crate::compose::owned_systems(d, name))
        .unwrap_or_default();
    let definition = &followed.definition;
    let summary = if let Some(error) = &followed.error {
        format!("failing: {error}")
    } else if followed.outcome.as_deref() == Some("refused") && followed.handled == followed.head {
        format!(
            "commit {} refused ({} problem(s)); {}",
            followed.head.as_deref().map(short).unwrap_or_default(),
            followed.problems.len(),
            match &in_force_commit {
                Some(c) => format!("{} stays in force", short(c)),
                None => "nothing of it is in force".to_owned(),
            }
        )
    } else {
        match (&followed.head, &latest_commit, &in_force_commit) {
            (None, _, _) => "not fetched yet".to_owned(),
            (Some(_), None, _) => "nothing of it applied yet".to_owned(),
            // Handled, yet another commit is in the latest revision: a rollback went back to it.
            (Some(head), Some(latest), _)
                if head != latest
                    && followed.handled.as_ref() == Some(head)
                    && followed.outcome.as_deref() == Some("applied") =>
            {
                format!(
                    "pinned at {} (rolled back from {}); Git is ahead: its next commit applies again",
                    short(latest),
                    short(head)
                )
            }
            (Some(_), Some(latest), Some(in_force)) if latest == in_force => format!("in force at {}", short(in_force)),
            (Some(_), Some(latest), in_force) => format!(
                "{} applied, not in force (rolling out, halted or rolled back: see its change); {}",
                short(latest),
                match in_force {
                    Some(c) => format!("{} in force", short(c)),
                    None => "nothing of it in force".to_owned(),
                }
            ),
        }
    };
    Ok(SourceView {
        name: definition.name.clone(),
        repository: endstate_git::redact(&definition.repository),
        branch: definition.branch.clone(),
        paths: definition.paths.clone(),
        interval_ms: definition.interval_ms,
        credentials_file: definition.credentials_file.clone(),
        webhook_secret_file: definition.webhook_secret_file.clone(),
        head: followed.head.clone(),
        handled: followed.handled.clone(),
        latest: latest_commit,
        in_force: in_force_commit,
        fetched_at: followed.fetched_ms.map(crate::rfc3339),
        fetches: state
            .sources()
            .fetches_of(&endstate_git::redact(&definition.repository)),
        error: followed.error.clone(),
        problems: followed.problems.clone(),
        systems,
        summary,
    })
}

fn read_secret(path: &str) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read the secret file {path}: {error}"))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("the secret file {path} is empty"));
    }
    Ok(secret.as_bytes().to_vec())
}

/// A forge's webhook call, checked: GitHub (`X-Hub-Signature-256: sha256=HEX`), Gitea
/// (`X-Gitea-Signature: HEX`) and Forgejo (`X-Forgejo-Signature: HEX`) sign the body with
/// HMAC-SHA256 under the secret; GitLab sends the secret itself (`X-Gitlab-Token`). Compared
/// in constant time. `Err` is the outcome counted.
fn verify(secret: &[u8], headers: &axum::http::HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let signed = header("x-hub-signature-256")
        .map(|v| v.strip_prefix("sha256=").unwrap_or("-"))
        .or_else(|| header("x-gitea-signature"))
        .or_else(|| header("x-forgejo-signature"));
    if let Some(signature) = signed {
        let tag = unhex(signature).ok_or("bad_signature")?;
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        return aws_lc_rs::hmac::verify(&key, body, &tag).map_err(|_| "bad_signature");
    }
    if let Some(token) = header("x-gitlab-token") {
        return aws_lc_rs::constant_time::verify_slices_are_equal(token.as_bytes(), secret)
            .map_err(|_| "bad_signature");
    }
    Err("unsigned")
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// A forge says a repository changed: fetch the source's repository now (its other sources
/// are served by the same fetch). Authenticated by the forge's signature (or GitLab's token)
/// under the source's `webhook_secret_file`, not by a bearer token; a call that does not check
/// out, or a delivery seen before, is refused, counted (`endstate_source_hooks`), and fetches
/// nothing.
#[utoipa::path(post, path = "/v1/sources/{name}/hook", params(("name" = String, Path, description = "the source")),
    request_body(content = String, description = "the forge's event, as it sends it (only its signature is read)", content_type = "application/json"),
    responses((status = 202, body = endstate_api::HookAccepted), (status = 401, body = endstate_api::Problem),
        (status = 404, body = endstate_api::Problem), (status = 409, description = "a delivery seen before", body = endstate_api::Problem)),
    security(()))]
pub(crate) async fn hook(
    State(state): State<AppState>,
    Segment(name): Segment,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<endstate_api::HookAccepted>), ApiError> {
    let count = |outcome: &str| {
        state
            .metrics()
            .source_hooks
            .get_or_create(&crate::metrics::HookLabels {
                source: name.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
    };
    let Some(definition) = state.sources().lock().get(&name).map(|f| f.definition.clone()) else {
        return Err(ApiError::NotFound(format!("no source named {name:?}")));
    };
    let Some(path) = &definition.webhook_secret_file else {
        count("no_secret");
        return Err(ApiError::Unauthenticated(
            "this source has no webhook secret (webhook_secret_file): its webhook is refused",
        ));
    };
    let secret = read_secret(path).map_err(|why| {
        count("no_secret");
        tracing::warn!(
            source = name,
            why,
            "A webhook call was refused: the secret cannot be read."
        );
        ApiError::Unavailable("the source's webhook secret cannot be read on the server".into())
    })?;
    if let Err(outcome) = verify(&secret, &headers, &body) {
        count(outcome);
        return Err(ApiError::Unauthenticated(
            "the webhook call is not signed with the source's secret (X-Hub-Signature-256, X-Gitea-Signature, X-Forgejo-Signature or X-Gitlab-Token)",
        ));
    }
    let delivery = [
        "x-github-delivery",
        "x-gitea-delivery",
        "x-forgejo-delivery",
        "x-gitlab-event-uuid",
    ]
    .iter()
    .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
    .map(|d| d.chars().take(128).collect::<String>());
    if let Some(id) = &delivery {
        let mut seen = state
            .sources()
            .deliveries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = format!("{name} {id}");
        if seen.contains(&key) {
            count("replayed");
            return Err(ApiError::Conflict(format!(
                "delivery {id} was received before: a replay is not fetched"
            )));
        }
        if seen.len() >= MAX_DELIVERIES {
            seen.pop_front();
        }
        seen.push_back(key);
    }
    count("accepted");
    let now = state.now_ms();
    for followed in state.sources().lock().values_mut() {
        if followed.definition.repository == definition.repository {
            followed.due_ms = followed.due_ms.min(now);
        }
    }
    state.sources().wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(endstate_api::HookAccepted {
            source: name.clone(),
            delivery,
            detail: format!("{} is fetched now", definition.repository),
        }),
    ))
}
