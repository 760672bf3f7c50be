//! The runtime (the agent's reconciler) with real processes: artifacts are `/bin/sh` scripts in a
//! temporary directory that `exec sleep`, health is probed against test servers on `127.0.0.1`
//! or with `test -f` in the run directory, and the leftovers of a "killed" agent are real
//! process groups.
//!
//! Every wait is bounded by [`PATIENCE`]; nothing asserts on durations.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use endstate_agent::{ApplyOutcome, RestartPolicy, Runtime, RuntimeConfig, RuntimeError};
use endstate_agent_proto::{
    ActionAssignment, ActionOutcome, ActionParameter, ActionParameterType, ActionResult, ActualInstance, Artifact,
    ArtifactSource, ConfigFile, DesiredInstances, HealthProbe, IgnoreReason, InstanceAssignment, InstanceId,
    InstanceStateChange, InstanceStateWord, Observed, Probe, RunAction, UpgradeOrder,
};
use endstate_types::Generation;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use crate::{eventually, servers};

/// Generous: only a broken runtime makes a test wait this long.
const PATIENCE: Duration = Duration::from_secs(20);

const SLEEPER: &str = "echo \"started $0 in $(pwd)\"\nexec sleep 1000";

// === harness ===

/// A runtime on temporary directories, with the receiving end of its observations.
struct Agent {
    runtime: Runtime,
    observed: Observer,
    data: TempDir,
    root: TempDir,
}

impl Agent {
    async fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let (runtime, observed) = start(config(data.path(), root.path())).await;
        Agent {
            runtime,
            observed,
            data,
            root,
        }
    }

    /// Writes an executable shell script into the artifact root; returns its absolute path.
    fn script(&self, name: &str, body: &str) -> String {
        script(&self.root.path().join(name), body)
    }

    async fn apply(&self, desired: DesiredInstances) -> ApplyOutcome {
        self.runtime.apply(desired).await.unwrap()
    }
}

fn config(data: &Path, root: &Path) -> RuntimeConfig {
    RuntimeConfig {
        resource_interval: Duration::from_millis(200),
        restart: RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            reset_after: Duration::from_secs(60),
        },
        ..RuntimeConfig::new(data, root)
    }
}

async fn start(config: RuntimeConfig) -> (Runtime, Observer) {
    let (tx, rx) = mpsc::channel(64);
    let runtime = Runtime::start(config, tx).await.unwrap();
    (runtime, Observer { rx, seen: Vec::new() })
}

fn script(path: &Path, body: &str) -> String {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// Every observation received, and waits on them.
struct Observer {
    rx: mpsc::Receiver<Observed>,
    seen: Vec<Observed>,
}

impl Observer {
    /// The first observation at index `since` or later that matches; returns its index too.
    async fn wait(&mut self, what: &str, since: usize, matches: impl Fn(&Observed) -> bool) -> (usize, Observed) {
        let deadline = Instant::now() + PATIENCE;
        let mut checked = since;
        loop {
            while checked < self.seen.len() {
                if matches(&self.seen[checked]) {
                    return (checked, self.seen[checked].clone());
                }
                checked += 1;
            }
            match timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(observed)) => self.seen.push(observed),
                Ok(None) => panic!("{what}: the channel closed; seen {:#?}", self.seen),
                Err(_) => panic!("{what}: not observed in time; seen {:#?}", self.seen),
            }
        }
    }

    /// Waits for a state change of `instance` to `word` (at generation `generation`, if given).
    async fn state(
        &mut self,
        instance: &str,
        word: InstanceStateWord,
        generation: Option<u64>,
        since: usize,
    ) -> (usize, InstanceStateChange) {
        let what = format!("{instance} {word:?} at {generation:?}");
        let (idx, observed) = self
            .wait(&what, since, |observed| {
                change(observed).is_some_and(|change| {
                    change.instance.0 == instance
                        && change.state == word
                        && generation.is_none_or(|generation| change.generation == Generation(generation))
                })
            })
            .await;
        (idx, change(&observed).unwrap().clone())
    }

    /// Waits for a health observation of `instance`.
    async fn health(&mut self, instance: &str, healthy: bool, since: usize) -> (usize, String) {
        let (idx, observed) = self
            .wait(&format!("{instance} healthy={healthy}"), since, |observed| {
                matches!(observed, Observed::Health(health) if health.instance.0 == instance && health.healthy == healthy)
            })
            .await;
        let Observed::Health(health) = observed else {
            unreachable!()
        };
        (idx, health.detail)
    }

    /// Takes whatever has arrived without waiting.
    fn drain(&mut self) {
        while let Ok(observed) = self.rx.try_recv() {
            self.seen.push(observed);
        }
    }

    /// The state changes of `instance` seen so far.
    fn states_of(&self, instance: &str) -> Vec<InstanceStateChange> {
        self.seen
            .iter()
            .filter_map(change)
            .filter(|change| change.instance.0 == instance)
            .cloned()
            .collect()
    }
}

fn change(observed: &Observed) -> Option<&InstanceStateChange> {
    match observed {
        Observed::InstanceState(change) => Some(change),
        _ => None,
    }
}

fn assignment(id: &str, version: &str, path: &str) -> InstanceAssignment {
    let command = Path::new(path).file_name().unwrap().to_str().unwrap().to_owned();
    InstanceAssignment {
        id: InstanceId(id.to_owned()),
        artifact: Artifact {
            version: version.to_owned(),
            source: ArtifactSource::Path { path: path.to_owned() },
        },
        command,
        args: Vec::new(),
        env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
        config_files: Vec::new(),
        ports: BTreeMap::new(),
        health: None,
        stop_grace_ms: 5000,
        upgrade: UpgradeOrder::StopFirst,
        run_as: None,
    }
}

/// An exec probe that passes once the file `ready` exists in the run directory.
fn ready_probe(unhealthy_after: u32) -> HealthProbe {
    HealthProbe {
        probe: Probe::Exec {
            command: "test".to_owned(),
            args: vec!["-f".to_owned(), "ready".to_owned()],
        },
        interval_ms: 100,
        timeout_ms: 2000,
        healthy_after: 1,
        unhealthy_after,
    }
}

/// An assignment probed by [`ready_probe`], replaced start-first.
fn start_first(id: &str, version: &str, path: &str) -> InstanceAssignment {
    InstanceAssignment {
        health: Some(ready_probe(1)),
        upgrade: UpgradeOrder::StartFirst,
        run_as: None,
        ..assignment(id, version, path)
    }
}

/// A program that is ready at once: it creates `ready` in its run directory.
const READY_AT_ONCE: &str = "echo \"started $0 in $(pwd)\"\ntouch ready\nexec sleep 1000";

fn desired(generation: u64, instances: Vec<InstanceAssignment>) -> DesiredInstances {
    DesiredInstances {
        generation: Generation(generation),
        instances,
        checks: Vec::new(),
        actions: Vec::new(),
    }
}

fn ids(ids: &[&str]) -> Vec<InstanceId> {
    ids.iter().map(|id| InstanceId((*id).to_owned())).collect()
}

fn applied(outcome: ApplyOutcome) -> endstate_agent::ApplySummary {
    match outcome {
        ApplyOutcome::Applied(summary) => summary,
        ApplyOutcome::Ignored(reason) => panic!("ignored: {reason}"),
    }
}

/// The fields of `/proc/<pid>/stat` after the command name, from field 3 on.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_ascii_whitespace().map(str::to_owned).collect())
}

/// Whether a process group has no member left that is not a zombie.
fn group_is_gone(pgid: u32) -> bool {
    let pgid = pgid.to_string();
    std::fs::read_dir("/proc").unwrap().all(|entry| {
        let Some(pid) = entry.ok().and_then(|e| e.file_name().to_str()?.parse::<i32>().ok()) else {
            return true;
        };
        match stat_fields(pid) {
            Some(fields) => fields[2] != pgid || fields[0] == "Z" || fields[0] == "X",
            None => true,
        }
    })
}

/// Whether `groups.json` records process group `pgid`.
fn recorded(groups_file: &Path, pgid: u32) -> bool {
    let Ok(bytes) = std::fs::read(groups_file) else {
        return false;
    };
    let groups: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|group| group["pgid"] == serde_json::json!(pgid))
}

fn cwd(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap()
}

async fn log_contains(runtime: &Runtime, instance: &str, needle: &str) -> bool {
    runtime
        .logs(instance)
        .await
        .is_ok_and(|logs| logs.stdout.text().contains(needle))
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_starts_instances_and_reports_them() {
    let mut agent = Agent::start().await;
    assert_eq!(agent.runtime.generation(), None);
    let id = "shop/web#0";
    let path = agent.script("service", SLEEPER);
    let summary = applied(agent.apply(desired(1, vec![assignment(id, "1.0", &path)])).await);
    assert_eq!(summary.generation, Generation(1));
    assert_eq!(summary.started, ids(&[id]));
    assert_eq!(agent.runtime.generation(), Some(Generation(1)));
    assert_eq!(
        std::fs::read_to_string(agent.data.path().join("runtime/generation")).unwrap(),
        "1\n"
    );

    let (starting, change) = agent.observed.state(id, InstanceStateWord::Starting, Some(1), 0).await;
    assert_eq!((change.version.as_str(), change.restarts), ("1.0", 0));
    let (_, running) = agent
        .observed
        .state(id, InstanceStateWord::Running, Some(1), starting)
        .await;
    let pid = running.pid.unwrap();
    agent.observed.health(id, true, starting).await;
    let expected = [ActualInstance {
        instance: InstanceId(id.to_owned()),
        generation: Generation(1),
        version: "1.0".to_owned(),
        state: InstanceStateWord::Running,
        pid: Some(pid),
        healthy: Some(true),
    }];
    // The bookkeeper records what the observations say a moment after they are sent.
    crate::eventually("the actual state to say running and healthy", async || {
        agent.runtime.actual().await == expected
    })
    .await;

    // The program is the installed copy, run in its own fresh directory.
    let run_dir = cwd(pid);
    assert!(
        run_dir.starts_with(agent.data.path().join("instances/shop/web/0")),
        "{}",
        run_dir.display()
    );
    assert!(run_dir.file_name().unwrap().to_str().unwrap().starts_with("1-"));
    let versions = agent.data.path().join("versions/shop/web");
    eventually("the start line in the log", async || {
        log_contains(&agent.runtime, id, &format!("started {}", versions.display())).await
    })
    .await;

    // The live group is recorded for the next agent.
    let groups_file = agent.data.path().join("runtime/groups.json");
    eventually("the group is recorded", async || recorded(&groups_file, pid)).await;
    let groups: serde_json::Value = serde_json::from_slice(&std::fs::read(&groups_file).unwrap()).unwrap();
    assert_eq!(groups["groups"][0]["instance"], serde_json::json!(id), "{groups}");

    agent.runtime.shutdown().await;
    agent
        .observed
        .state(id, InstanceStateWord::Stopped, Some(1), starting)
        .await;
    assert!(group_is_gone(pid));
    assert!(!agent.data.path().join("runtime/groups.json").exists());
    assert!(matches!(
        agent.runtime.apply(desired(2, Vec::new())).await,
        Err(RuntimeError::ShutDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_instance_is_restarted_and_counted() {
    let mut agent = Agent::start().await;
    let id = "shop/crash#0";
    let path = agent.script("crash", "exit 3");
    agent.apply(desired(1, vec![assignment(id, "1.0", &path)])).await;
    let (running, _) = agent.observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    let (exited, change) = agent
        .observed
        .state(id, InstanceStateWord::Exited, Some(1), running)
        .await;
    assert_eq!((change.exit_code, change.signal, change.pid), (Some(3), None, None));
    agent.observed.health(id, false, running).await;
    let (backoff, change) = agent
        .observed
        .state(id, InstanceStateWord::BackingOff, Some(1), exited)
        .await;
    assert!(!change.detail.is_empty(), "{change:?}");
    let (_, again) = agent
        .observed
        .state(id, InstanceStateWord::Starting, Some(1), backoff)
        .await;
    assert_eq!(again.restarts, 1);
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_generation_replaces_a_changed_instance() {
    let mut agent = Agent::start().await;
    let id = "shop/web#0";
    let path = agent.script("service", SLEEPER);
    agent.apply(desired(1, vec![assignment(id, "1.0", &path)])).await;
    let (_, first) = agent.observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    let old_pid = first.pid.unwrap();
    let old_dir = cwd(old_pid);

    let summary = applied(agent.apply(desired(2, vec![assignment(id, "2.0", &path)])).await);
    assert_eq!(summary.replaced, ids(&[id]));
    let (stopped, _) = agent.observed.state(id, InstanceStateWord::Stopped, Some(1), 0).await;
    let (new_start, change) = agent.observed.state(id, InstanceStateWord::Starting, Some(2), 0).await;
    assert!(stopped < new_start, "stop-then-start: {:#?}", agent.observed.seen);
    assert_eq!(change.version, "2.0");
    let (_, second) = agent
        .observed
        .state(id, InstanceStateWord::Running, Some(2), new_start)
        .await;
    let new_pid = second.pid.unwrap();
    assert_ne!(new_pid, old_pid);
    assert!(group_is_gone(old_pid));

    let new_dir = cwd(new_pid);
    assert_ne!(new_dir, old_dir);
    assert_eq!(new_dir.parent(), old_dir.parent());
    assert!(new_dir.file_name().unwrap().to_str().unwrap().starts_with("2-"));
    assert!(old_dir.is_dir(), "the previous run directory is kept");
    let actual = agent.runtime.actual().await;
    assert_eq!(
        (actual[0].generation, actual[0].version.as_str(), actual[0].pid),
        (Generation(2), "2.0", Some(new_pid))
    );
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_keeps_the_old_run_until_the_new_one_is_healthy() {
    let mut agent = Agent::start().await;
    let id = "shop/web#0";
    let v1 = start_first(id, "1.0", &agent.script("ready-at-once", READY_AT_ONCE));
    let v2 = start_first(id, "2.0", &agent.script("ready-later", SLEEPER));
    agent.apply(desired(1, vec![v1])).await;
    let (first, running) = agent.observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    let old_pid = running.pid.unwrap();
    agent.observed.health(id, true, first).await;

    let summary = applied(agent.apply(desired(2, vec![v2])).await);
    assert_eq!(summary.replaced, ids(&[id]));
    let (new_start, _) = agent.observed.state(id, InstanceStateWord::Starting, Some(2), 0).await;
    let (new_running, running) = agent
        .observed
        .state(id, InstanceStateWord::Running, Some(2), new_start)
        .await;
    let new_pid = running.pid.unwrap();
    assert!(!group_is_gone(old_pid), "the old run serves while the new one starts");
    // The new run has no `ready` yet: its probe says unhealthy, and the old run is kept.
    let (unhealthy, _) = agent.observed.health(id, false, new_start).await;
    assert!(
        !group_is_gone(old_pid),
        "the old run serves while the new one is unhealthy"
    );
    agent.observed.drain();
    let old_words: Vec<InstanceStateWord> = agent
        .observed
        .states_of(id)
        .iter()
        .filter(|change| change.generation == Generation(1))
        .map(|change| change.state)
        .collect();
    assert_eq!(old_words, [InstanceStateWord::Starting, InstanceStateWord::Running]);
    // The instance is the new run from its start: what the desired set asks for.
    assert_eq!(
        agent.runtime.actual().await,
        [ActualInstance {
            instance: InstanceId(id.to_owned()),
            generation: Generation(2),
            version: "2.0".to_owned(),
            state: InstanceStateWord::Running,
            pid: Some(new_pid),
            // Its probe said unhealthy (no `ready` yet).
            healthy: Some(false),
        }]
    );
    eventually("the logs are the new run's", async || {
        log_contains(&agent.runtime, id, "ready-later").await
    })
    .await;
    assert!(!log_contains(&agent.runtime, id, "ready-at-once").await);

    // Healthy: the old run goes, and only then.
    std::fs::write(cwd(new_pid).join("ready"), "").unwrap();
    let (healthy, _) = agent.observed.health(id, true, unhealthy).await;
    let (old_stopping, _) = agent.observed.state(id, InstanceStateWord::Stopping, Some(1), 0).await;
    let (old_stopped, stopped) = agent.observed.state(id, InstanceStateWord::Stopped, Some(1), 0).await;
    assert!(
        new_running < old_stopping && unhealthy < old_stopping,
        "{:#?}",
        agent.observed.seen
    );
    assert!(old_stopping < old_stopped);
    assert_eq!((stopped.generation, stopped.version.as_str()), (Generation(1), "1.0"));
    assert!(group_is_gone(old_pid));
    assert!(!group_is_gone(new_pid));
    agent.observed.drain();
    assert!(
        agent
            .observed
            .states_of(id)
            .iter()
            .all(|change| change.generation == Generation(1) || change.state != InstanceStateWord::Stopping),
        "the new run is left alone: {:#?}",
        agent.observed.seen
    );
    // The old run's stop does not make the instance unhealthy.
    assert!(
        !agent.observed.seen[healthy..]
            .iter()
            .any(|observed| matches!(observed, Observed::Health(health) if !health.healthy)),
        "{:#?}",
        agent.observed.seen
    );
    let actual = agent.runtime.actual().await;
    assert_eq!(
        (actual[0].generation, actual[0].version.as_str(), actual[0].pid),
        (Generation(2), "2.0", Some(new_pid))
    );
    agent.runtime.shutdown().await;
    agent
        .observed
        .state(id, InstanceStateWord::Stopped, Some(2), new_running)
        .await;
    assert!(group_is_gone(new_pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_without_a_probe_replaces_once_the_new_run_runs() {
    let mut agent = Agent::start().await;
    let id = "shop/web#0";
    let path = agent.script("service", SLEEPER);
    let unprobed = |version: &str| InstanceAssignment {
        upgrade: UpgradeOrder::StartFirst,
        run_as: None,
        ..assignment(id, version, &path)
    };
    agent.apply(desired(1, vec![unprobed("1.0")])).await;
    let (first, running) = agent.observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    let old_pid = running.pid.unwrap();
    agent.observed.health(id, true, first).await;

    agent.apply(desired(2, vec![unprobed("2.0")])).await;
    let (new_start, _) = agent.observed.state(id, InstanceStateWord::Starting, Some(2), 0).await;
    let (new_running, running) = agent
        .observed
        .state(id, InstanceStateWord::Running, Some(2), new_start)
        .await;
    let (old_stopped, _) = agent.observed.state(id, InstanceStateWord::Stopped, Some(1), 0).await;
    assert!(new_running < old_stopped, "{:#?}", agent.observed.seen);
    assert!(group_is_gone(old_pid));
    // The new run's "running is healthy", and nothing of the old run's stop.
    agent.observed.health(id, true, new_start).await;
    agent.observed.drain();
    assert!(
        !agent.observed.seen[new_start..]
            .iter()
            .any(|observed| matches!(observed, Observed::Health(health) if !health.healthy)),
        "{:#?}",
        agent.observed.seen
    );
    assert_eq!(agent.runtime.actual().await[0].pid, running.pid);
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_abandoned_for_the_old_assignment_keeps_the_old_run() {
    let mut agent = Agent::start().await;
    let id = "shop/web#0";
    let v1 = start_first(id, "1.0", &agent.script("ready-at-once", READY_AT_ONCE));
    // A replacement that crash-loops: it never gets healthy.
    let v2 = start_first(id, "2.0", &agent.script("crash", "echo crashing\nexit 3"));
    agent.apply(desired(1, vec![v1.clone()])).await;
    let (first, running) = agent.observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    let old_pid = running.pid.unwrap();
    agent.observed.health(id, true, first).await;

    agent.apply(desired(2, vec![v2])).await;
    // Restarted by the supervisor, with backoff, while the old run keeps serving.
    let (again, _) = agent
        .observed
        .wait("the replacement restarted twice", 0, |observed| {
            change(observed).is_some_and(|change| {
                change.generation == Generation(2)
                    && change.state == InstanceStateWord::Starting
                    && change.restarts >= 2
            })
        })
        .await;
    agent
        .observed
        .state(id, InstanceStateWord::BackingOff, Some(2), 0)
        .await;
    assert!(
        !group_is_gone(old_pid),
        "the old run serves while the new one crash-loops"
    );
    assert!(
        agent
            .observed
            .states_of(id)
            .iter()
            .all(|change| change.generation != Generation(1)
                || !matches!(change.state, InstanceStateWord::Stopping | InstanceStateWord::Stopped)),
        "{:#?}",
        agent.observed.seen
    );

    // Back to the old assignment: the replacement is stopped, the old run kept.
    let summary = applied(agent.apply(desired(3, vec![v1])).await);
    assert_eq!(summary.replaced, ids(&[id]));
    agent
        .observed
        .state(id, InstanceStateWord::Stopped, Some(2), again)
        .await;
    // Re-announced with generation 3 (the server ignores generation 1 after it heard of 2).
    let (announced, change) = agent.observed.state(id, InstanceStateWord::Running, Some(3), 0).await;
    assert_eq!((change.pid, change.version.as_str()), (Some(old_pid), "1.0"));
    assert!(change.detail.contains("abandoned"), "{change:?}");
    agent.observed.health(id, true, announced).await;
    assert!(!group_is_gone(old_pid));
    agent.observed.drain();
    assert!(
        agent.observed.states_of(id).iter().all(|change| change.version != "1.0"
            || !matches!(change.state, InstanceStateWord::Stopping | InstanceStateWord::Stopped)),
        "the old run was never stopped: {:#?}",
        agent.observed.seen
    );
    assert_eq!(
        agent.runtime.actual().await,
        [ActualInstance {
            instance: InstanceId(id.to_owned()),
            generation: Generation(3),
            version: "1.0".to_owned(),
            state: InstanceStateWord::Running,
            pid: Some(old_pid),
            healthy: Some(true),
        }]
    );
    eventually("the logs are the old run's again", async || {
        log_contains(&agent.runtime, id, "ready-at-once").await
    })
    .await;

    // It is replaced as any run later, and reports its new generation when it goes.
    let v4 = start_first(id, "4.0", &agent.script("ready-at-once-4", READY_AT_ONCE));
    agent.apply(desired(4, vec![v4])).await;
    let (new_running, running) = agent.observed.state(id, InstanceStateWord::Running, Some(4), 0).await;
    let (old_stopped, _) = agent.observed.state(id, InstanceStateWord::Stopped, Some(3), 0).await;
    assert!(new_running < old_stopped);
    assert!(group_is_gone(old_pid));
    assert_eq!(agent.runtime.actual().await[0].pid, running.pid);
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_abandoned_for_a_newer_version_replaces_the_old_run_with_it() {
    let mut agent = Agent::start().await;
    let id = "shop/web#0";
    let v1 = start_first(id, "1.0", &agent.script("ready-at-once", READY_AT_ONCE));
    let v2 = start_first(id, "2.0", &agent.script("ready-later", SLEEPER));
    let v3 = start_first(id, "3.0", &agent.script("ready-at-once-3", READY_AT_ONCE));
    agent.apply(desired(1, vec![v1])).await;
    let (first, running) = agent.observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    let old_pid = running.pid.unwrap();
    agent.observed.health(id, true, first).await;

    agent.apply(desired(2, vec![v2])).await;
    let (pending, running) = agent.observed.state(id, InstanceStateWord::Running, Some(2), 0).await;
    let pending_pid = running.pid.unwrap();
    agent.observed.health(id, false, pending).await;

    agent.apply(desired(3, vec![v3])).await;
    let (pending_stopped, _) = agent.observed.state(id, InstanceStateWord::Stopped, Some(2), 0).await;
    assert!(group_is_gone(pending_pid));
    let (new_start, _) = agent.observed.state(id, InstanceStateWord::Starting, Some(3), 0).await;
    let (new_running, running) = agent
        .observed
        .state(id, InstanceStateWord::Running, Some(3), new_start)
        .await;
    let new_pid = running.pid.unwrap();
    agent.observed.health(id, true, new_start).await;
    let (old_stopped, stopped) = agent.observed.state(id, InstanceStateWord::Stopped, Some(1), 0).await;
    assert!(
        pending_stopped < new_start && new_running < old_stopped,
        "{:#?}",
        agent.observed.seen
    );
    assert_eq!(stopped.version, "1.0");
    assert!(group_is_gone(old_pid));
    assert!(!group_is_gone(new_pid));
    let actual = agent.runtime.actual().await;
    assert_eq!(
        (actual[0].generation, actual[0].version.as_str(), actual[0].pid),
        (Generation(3), "3.0", Some(new_pid))
    );
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_reported_afresh_after_a_restart() {
    let mut agent = Agent::start().await;
    let id = "shop/web#0";
    let probed = InstanceAssignment {
        // Failures would have to be consecutive for a while: a quick restart never crosses it.
        health: Some(ready_probe(1000)),
        ..assignment(id, "1.0", &agent.script("ready-at-once", READY_AT_ONCE))
    };
    agent.apply(desired(1, vec![probed])).await;
    let (first, running) = agent.observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    agent.observed.health(id, true, first).await;

    kill(
        Pid::from_raw(i32::try_from(running.pid.unwrap()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    let (exited, change) = agent
        .observed
        .state(id, InstanceStateWord::Exited, Some(1), first)
        .await;
    assert_eq!(change.signal, Some(9), "{change:?}");
    let (_, again) = agent
        .observed
        .state(id, InstanceStateWord::Running, Some(1), exited)
        .await;
    assert_eq!(again.restarts, 1);
    assert_ne!(again.pid, running.pid);
    // `ready` is still there, so the probe never failed: only a fresh count reports it.
    agent.observed.health(id, true, exited).await;
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_or_same_generations_are_ignored_and_nothing_restarts() {
    let mut agent = Agent::start().await;
    let (web0, web1) = ("shop/web#0", "shop/web#1");
    let path = agent.script("service", SLEEPER);
    agent.apply(desired(5, vec![assignment(web0, "1.0", &path)])).await;
    let (_, running) = agent.observed.state(web0, InstanceStateWord::Running, Some(5), 0).await;
    let pid = running.pid.unwrap();

    let changed = vec![assignment(web0, "9.9", &path)];
    assert_eq!(
        agent.apply(desired(5, changed.clone())).await,
        ApplyOutcome::Ignored(IgnoreReason::Same { current: Generation(5) })
    );
    assert_eq!(
        agent.apply(desired(3, changed)).await,
        ApplyOutcome::Ignored(IgnoreReason::Older {
            current: Generation(5),
            incoming: Generation(3)
        })
    );
    assert_eq!(agent.runtime.generation(), Some(Generation(5)));

    // A newer generation with the same assignment leaves it alone, at its own generation.
    let summary = applied(agent.apply(desired(6, vec![assignment(web0, "1.0", &path)])).await);
    assert_eq!((summary.unchanged, summary.started), (ids(&[web0]), Vec::new()));
    let summary = applied(
        agent
            .apply(desired(
                7,
                vec![assignment(web0, "1.0", &path), assignment(web1, "1.0", &path)],
            ))
            .await,
    );
    assert_eq!((summary.unchanged, summary.started), (ids(&[web0]), ids(&[web1])));
    // web#1 running at 7 is the marker: web#0 was never touched before (nor after) it.
    agent.observed.state(web1, InstanceStateWord::Running, Some(7), 0).await;
    agent.observed.drain();
    let words: Vec<InstanceStateWord> = agent.observed.states_of(web0).iter().map(|c| c.state).collect();
    assert_eq!(words, [InstanceStateWord::Starting, InstanceStateWord::Running]);
    let actual = agent.runtime.actual().await;
    assert_eq!(actual.len(), 2);
    assert_eq!(
        (actual[0].instance.0.as_str(), actual[0].generation, actual[0].pid),
        (web0, Generation(5), Some(pid))
    );
    assert_eq!(actual[1].generation, Generation(7));
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_stops_the_instance() {
    let mut agent = Agent::start().await;
    let (gone, kept) = ("shop/web#0", "shop/worker#0");
    let path = agent.script("service", SLEEPER);
    agent
        .apply(desired(
            1,
            vec![assignment(gone, "1.0", &path), assignment(kept, "1.0", &path)],
        ))
        .await;
    let (_, running) = agent.observed.state(gone, InstanceStateWord::Running, None, 0).await;
    let gone_pid = running.pid.unwrap();
    let (_, running) = agent.observed.state(kept, InstanceStateWord::Running, None, 0).await;
    let kept_pid = running.pid.unwrap();

    let summary = applied(agent.apply(desired(2, vec![assignment(kept, "1.0", &path)])).await);
    assert_eq!(summary.stopped, ids(&[gone]));
    agent
        .observed
        .state(gone, InstanceStateWord::Stopping, Some(1), 0)
        .await;
    agent.observed.state(gone, InstanceStateWord::Stopped, Some(1), 0).await;
    assert!(group_is_gone(gone_pid));
    eventually("the removed instance is forgotten", async || {
        matches!(agent.runtime.logs(gone).await, Err(RuntimeError::UnknownInstance(_)))
    })
    .await;
    let actual = agent.runtime.actual().await;
    assert_eq!(actual.len(), 1, "{actual:?}");
    assert_eq!((actual[0].instance.0.as_str(), actual[0].pid), (kept, Some(kept_pid)));
    assert!(!group_is_gone(kept_pid));
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_with_the_wrong_sha256_fails_alone_and_is_retried() {
    let mut agent = Agent::start().await;
    let body = format!("#!/bin/sh\n{SLEEPER}\n");
    let served = body.clone();
    let router = Router::new().route("/dl/service", get(move || async move { served }));
    let url = format!("http://{}/dl/service", servers::serve(router).await);
    let wrong: String = Sha256::digest(b"something else")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let right: String = Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let downloaded = |sha256: &str| {
        let mut assignment = assignment("shop/api#0", "1.0", "/unused/service");
        assignment.artifact.source = ArtifactSource::Url {
            url: url.clone(),
            sha256: sha256.to_owned(),
        };
        assignment
    };
    let (bad, good) = ("shop/api#0", "shop/web#0");
    let path = agent.script("service", SLEEPER);
    agent
        .apply(desired(1, vec![downloaded(&wrong), assignment(good, "1.0", &path)]))
        .await;

    let (failed, change) = agent
        .observed
        .state(bad, InstanceStateWord::SpawnFailed, Some(1), 0)
        .await;
    assert!(
        change.detail.contains(&format!("expected {wrong}")) && change.detail.contains("found sha256"),
        "{}",
        change.detail
    );
    assert!(change.detail.len() <= endstate_agent_proto::limits::MAX_DETAIL_BYTES);
    // Retried after a backoff, and counted.
    let (_, again) = agent
        .observed
        .state(bad, InstanceStateWord::SpawnFailed, Some(1), failed + 1)
        .await;
    assert!(again.restarts >= 1, "{again:?}");
    // The other instance does not care.
    agent.observed.state(good, InstanceStateWord::Running, Some(1), 0).await;
    agent.observed.health(good, true, 0).await;
    // Between two attempts (an attempt shows `starting`).
    eventually("actual shows the failure beside the running instance", async || {
        let actual = agent.runtime.actual().await;
        let states: Vec<(&str, InstanceStateWord)> = actual.iter().map(|a| (a.instance.0.as_str(), a.state)).collect();
        states
            == [
                (bad, InstanceStateWord::SpawnFailed),
                (good, InstanceStateWord::Running),
            ]
    })
    .await;
    assert!(matches!(
        agent.runtime.logs(bad).await,
        Err(RuntimeError::NotStarted(_))
    ));

    // The right checksum in a newer generation: it runs.
    let summary = applied(
        agent
            .apply(desired(2, vec![downloaded(&right), assignment(good, "1.0", &path)]))
            .await,
    );
    assert_eq!(summary.unchanged, ids(&[good]));
    agent.observed.state(bad, InstanceStateWord::Running, Some(2), 0).await;
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_files_are_written_into_the_run_directory() {
    let mut agent = Agent::start().await;
    let id = "shop/web#0";
    let path = agent.script("service", "cat conf/app.toml\nexec sleep 1000");
    let mut with_config = assignment(id, "1.0", &path);
    with_config.config_files = vec![ConfigFile {
        path: "conf/app.toml".to_owned(),
        content: "listen = \"127.0.0.1:8080\"\n".to_owned(),
    }];
    agent.apply(desired(1, vec![with_config.clone()])).await;
    let (_, running) = agent.observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    let run_dir = cwd(running.pid.unwrap());
    assert_eq!(
        std::fs::read_to_string(run_dir.join("conf/app.toml")).unwrap(),
        "listen = \"127.0.0.1:8080\"\n"
    );
    eventually("the program read its config", async || {
        log_contains(&agent.runtime, id, "listen = ").await
    })
    .await;

    // A path out of the run directory is refused before anything happens.
    let mut escaping = with_config;
    escaping.config_files[0].path = "../../escape".to_owned();
    let error = agent.runtime.apply(desired(2, vec![escaping])).await.unwrap_err();
    assert!(matches!(error, RuntimeError::Invalid { .. }), "{error}");
    assert_eq!(agent.runtime.generation(), Some(Generation(1)));
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_artifact_paths_resolve_against_the_artifact_root() {
    let mut agent = Agent::start().await;
    let id = "shop/web#0";
    agent.script("bin/example-service", SLEEPER);
    let relative = assignment(id, "1.0", "bin/example-service");
    assert_eq!(relative.command, "example-service");
    agent.apply(desired(1, vec![relative])).await;
    agent.observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    // Run from the version directory, under the artifact's file name.
    let version_dir = agent.data.path().join("versions/shop/web");
    eventually("the program is the installed copy", async || {
        let Ok(logs) = agent.runtime.logs(id).await else {
            return false;
        };
        let text = logs.stdout.text();
        text.starts_with(&format!("started {}/1.0-", version_dir.display())) && text.contains("/example-service in ")
    })
    .await;

    let outside = assignment(id, "2.0", "../bin/example-service");
    assert!(matches!(
        agent.runtime.apply(desired(2, vec![outside])).await,
        Err(RuntimeError::Invalid { .. })
    ));
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_reported_on_every_change() {
    let mut agent = Agent::start().await;
    let up = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&up);
    let router = Router::new().route(
        "/health",
        get(move || {
            let up = flag.load(Ordering::SeqCst);
            async move {
                if up {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "down")
                }
            }
        }),
    );
    let port = servers::serve(router).await.port();
    let path = agent.script("service", SLEEPER);
    let (http, exec) = ("shop/web#0", "shop/job#0");
    let mut probed = assignment(http, "1.0", &path);
    probed.ports = BTreeMap::from([("http".to_owned(), port)]);
    probed.health = Some(HealthProbe {
        probe: Probe::Http {
            port: "http".to_owned(),
            path: "/health".to_owned(),
        },
        interval_ms: 100,
        timeout_ms: 2000,
        healthy_after: 1,
        unhealthy_after: 2,
    });
    // The exec probe runs in the run directory, where the program writes `ready`.
    let ready_path = agent.script("ready-later", "touch ready\nexec sleep 1000");
    let mut ready = assignment(exec, "1.0", &ready_path);
    ready.health = Some(HealthProbe {
        probe: Probe::Exec {
            command: "test".to_owned(),
            args: vec!["-f".to_owned(), "ready".to_owned()],
        },
        interval_ms: 100,
        timeout_ms: 2000,
        healthy_after: 1,
        unhealthy_after: 1,
    });
    agent.apply(desired(1, vec![probed, ready])).await;

    let (first, _) = agent.observed.health(http, true, 0).await;
    up.store(false, Ordering::SeqCst);
    let (down, detail) = agent.observed.health(http, false, first).await;
    assert!(detail.contains("503"), "{detail}");
    up.store(true, Ordering::SeqCst);
    let (back, _) = agent.observed.health(http, true, down).await;
    agent.observed.health(exec, true, 0).await;

    // Changes only: one observation per change, not one per probe.
    let healths: Vec<bool> = agent.observed.seen[..=back]
        .iter()
        .filter_map(|observed| match observed {
            Observed::Health(health) if health.instance.0 == http => Some(health.healthy),
            _ => None,
        })
        .collect();
    assert_eq!(healths, [true, false, true]);
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_of_running_instances_are_sampled() {
    let mut agent = Agent::start().await;
    let id = "shop/web#0";
    let path = agent.script("service", "sleep 1000 &\nexec sleep 1000");
    agent.apply(desired(1, vec![assignment(id, "1.0", &path)])).await;
    agent.observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    let (_, observed) = agent
        .observed
        .wait("a resource sample", 0, |observed| {
            matches!(observed, Observed::Resources(resources) if resources.instance.0 == id && resources.rss_bytes > 0)
        })
        .await;
    let Observed::Resources(resources) = observed else {
        unreachable!()
    };
    // Two `sleep`s: more than a page each.
    assert!(resources.rss_bytes > 2 * 4096, "{resources:?}");
    agent.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_restarts_the_last_accepted_generation() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let id = "shop/web#0";
    let path = script(&root.path().join("service"), SLEEPER);
    let (first, mut observed) = start(config(data.path(), root.path())).await;
    first
        .apply(desired(3, vec![assignment(id, "1.0", &path)]))
        .await
        .unwrap();
    let (_, running) = observed.state(id, InstanceStateWord::Running, Some(3), 0).await;
    let old_pid = running.pid.unwrap();
    first.shutdown().await;
    assert!(group_is_gone(old_pid));

    let (second, mut observed) = start(config(data.path(), root.path())).await;
    assert_eq!(second.generation(), Some(Generation(3)));
    let (_, running) = observed.state(id, InstanceStateWord::Running, Some(3), 0).await;
    assert_ne!(running.pid, Some(old_pid));
    assert_eq!(
        second
            .apply(desired(3, vec![assignment(id, "1.0", &path)]))
            .await
            .unwrap(),
        ApplyOutcome::Ignored(IgnoreReason::Same { current: Generation(3) })
    );
    second.shutdown().await;
}

/// A process group spawned by the test, killed when dropped (if the runtime did not).
struct Leftover {
    child: std::process::Child,
}

impl Leftover {
    /// `sh` that leaves a background `sleep` in its group, then becomes `sleep` itself.
    fn spawn() -> Self {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 1000 & exec sleep 1000"])
            .process_group(0)
            .spawn()
            .unwrap();
        Leftover { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn start_ticks(&self) -> u64 {
        stat_fields(i32::try_from(self.pid()).unwrap()).unwrap()[19]
            .parse()
            .unwrap()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Leftover {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(i32::try_from(self.pid()).unwrap()), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn write_groups(data: &Path, boot_id: &str, groups: &[(&Leftover, u64)]) {
    let groups: Vec<serde_json::Value> = groups
        .iter()
        .map(|(group, start_ticks)| serde_json::json!({"instance": "shop/web#0", "pgid": group.pid(), "start_ticks": start_ticks}))
        .collect();
    let document = serde_json::json!({"boot_id": boot_id, "groups": groups});
    std::fs::create_dir_all(data.join("runtime")).unwrap();
    std::fs::write(data.join("runtime/groups.json"), document.to_string()).unwrap();
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_kills_what_a_killed_agent_left_running() {
    // A "killed" agent: its runtime is leaked, so nothing stops its instance, and its supervisor
    // would restart it only after an hour. Its groups.json is what the next agent finds.
    let killed_data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let id = "shop/web#0";
    let path = script(&root.path().join("service"), SLEEPER);
    let mut killed_config = config(killed_data.path(), root.path());
    killed_config.restart.initial_backoff = Duration::from_secs(3600);
    let (killed, mut killed_observed) = start(killed_config).await;
    killed
        .apply(desired(1, vec![assignment(id, "1.0", &path)]))
        .await
        .unwrap();
    let (since, running) = killed_observed.state(id, InstanceStateWord::Running, Some(1), 0).await;
    let pid = running.pid.unwrap();
    let groups_file = killed_data.path().join("runtime/groups.json");
    eventually("the group is recorded", async || recorded(&groups_file, pid)).await;
    std::mem::forget(killed);

    // The next agent (on a copy, so the leaked one cannot touch its files).
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("runtime")).unwrap();
    std::fs::copy(&groups_file, data.path().join("runtime/groups.json")).unwrap();
    let (next, _observed) = start(config(data.path(), root.path())).await;
    assert!(!data.path().join("runtime/groups.json").exists());
    eventually("the leftover group is gone", async || group_is_gone(pid)).await;
    // The killed agent's supervisor saw its instance end by SIGTERM.
    let (_, exited) = killed_observed
        .state(id, InstanceStateWord::Exited, Some(1), since)
        .await;
    assert_eq!(exited.signal, Some(15), "{exited:?}");
    assert!(next.actual().await.is_empty());
    next.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_kills_only_groups_that_are_still_the_recorded_ones() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut ours = Leftover::spawn();
    let mut reused = Leftover::spawn();
    // Both members of `ours` are in place before it is recorded.
    eventually("the background sleep started", async || {
        std::fs::read_dir("/proc").unwrap().any(|entry| {
            let Some(pid) = entry.ok().and_then(|e| e.file_name().to_str()?.parse::<i32>().ok()) else {
                return false;
            };
            u32::try_from(pid).unwrap() != ours.pid()
                && stat_fields(pid).is_some_and(|fields| fields[2] == ours.pid().to_string())
        })
    })
    .await;
    let (ours_ticks, reused_ticks) = (ours.start_ticks(), reused.start_ticks());
    write_groups(
        data.path(),
        &boot_id(),
        &[(&ours, ours_ticks), (&reused, reused_ticks + 1)],
    );
    let (runtime, _observed) = start(config(data.path(), root.path())).await;
    eventually("the recorded group is gone", async || group_is_gone(ours.pid())).await;
    let status = ours.child.wait().unwrap();
    assert_eq!(status.signal(), Some(15), "{status:?}");
    assert!(
        reused.is_running(),
        "a group whose leader started at another time is not ours"
    );
    assert!(!ours.is_running());
    runtime.shutdown().await;

    // Groups recorded in another boot are not ours either.
    let data = tempfile::tempdir().unwrap();
    write_groups(data.path(), "another-boot", &[(&reused, reused_ticks)]);
    let (runtime, _observed) = start(config(data.path(), root.path())).await;
    assert!(reused.is_running());
    assert!(!data.path().join("runtime/groups.json").exists());
    runtime.shutdown().await;
}

// === actions ===

fn catalogue_action(name: &str, command: &[&str], timeout_ms: u64) -> ActionAssignment {
    ActionAssignment {
        name: name.to_owned(),
        command: command.iter().map(|c| (*c).to_owned()).collect(),
        shell: false,
        parameters: [(
            "word".to_owned(),
            ActionParameter {
                kind: ActionParameterType::Enum,
                values: vec!["hello".into(), "bye".into()],
                min: None,
                max: None,
            },
        )]
        .into_iter()
        .collect(),
        timeout_ms,
    }
}

fn run_request(run: &str, action: &str, generation: u64, word: &str) -> RunAction {
    RunAction {
        run: run.to_owned(),
        action: action.to_owned(),
        generation: Generation(generation),
        params: [("word".to_owned(), word.to_owned())].into_iter().collect(),
        // The link checks signatures; the runtime takes what the link let through.
        signature: String::new(),
    }
}

async fn action_result(agent: &mut Agent, run: &str) -> ActionResult {
    let (_, observed) = agent
        .observed
        .wait(
            &format!("the result of {run}"),
            0,
            |o| matches!(o, Observed::Action(r) if r.run == run),
        )
        .await;
    let Observed::Action(result) = observed else {
        unreachable!()
    };
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_actions_of_the_catalogue_run_and_they_can_be_cancelled_or_time_out() {
    let mut agent = Agent::start().await;
    let echo = agent.script("bin/say", "echo \"said $1 in $(pwd)\"");
    let mut set = desired(4, Vec::new());
    set.actions = vec![
        catalogue_action("lab/say", &["bin/say", "{{ params.word }}"], 10_000),
        catalogue_action(
            "lab/wait",
            &["/bin/sh", "-c", "echo waiting; exec sleep 601", "{{ params.word }}"],
            10_000,
        ),
        catalogue_action(
            "lab/short",
            &["/bin/sh", "-c", "exec sleep 600", "{{ params.word }}"],
            300,
        ),
    ];
    agent.apply(set).await;

    // A catalogue action runs in the artifact root with the value in its argument.
    agent
        .runtime
        .run_action(run_request("run-1", "lab/say", 4, "hello"))
        .await;
    let result = action_result(&mut agent, "run-1").await;
    assert_eq!(result.outcome, ActionOutcome::Succeeded, "{result:?}");
    assert_eq!(result.exit_code, Some(0));
    let root = agent.root.path().canonicalize().unwrap();
    assert_eq!(result.output, format!("said hello in {}\n", root.display()), "{echo}");

    // Anything else is refused, with the reason, and nothing runs.
    for (run, request, reason) in [
        (
            "run-2",
            run_request("run-2", "lab/rm-rf", 4, "hello"),
            "lab/rm-rf is not in this host's catalogue",
        ),
        (
            "run-3",
            run_request("run-3", "lab/say", 3, "hello"),
            "generation 3, this agent holds generation 4",
        ),
        (
            "run-4",
            run_request("run-4", "lab/say", 4, "hello; rm -rf /"),
            "is not one of hello, bye",
        ),
    ] {
        agent.runtime.run_action(request).await;
        let result = action_result(&mut agent, run).await;
        assert_eq!(result.outcome, ActionOutcome::Refused, "{result:?}");
        assert!(result.detail.contains(reason), "{result:?}");
        assert!(result.output.is_empty());
    }

    // Cancelled mid-run: its process group is killed.
    agent
        .runtime
        .run_action(run_request("run-5", "lab/wait", 4, "bye"))
        .await;
    let sleeper = {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = std::fs::read_dir("/proc").unwrap().find_map(|e| {
                let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                (cmdline == "sleep 601 ").then_some(pid)
            });
            if let Some(pid) = found {
                break pid;
            }
            assert!(Instant::now() < deadline, "the action's sleep never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    agent.runtime.cancel_action("run-5");
    let result = action_result(&mut agent, "run-5").await;
    assert_eq!(result.outcome, ActionOutcome::Cancelled, "{result:?}");
    assert_eq!(result.output, "waiting\n");
    eventually("the cancelled action's process to be gone", async || {
        stat_fields(sleeper).is_none_or(|f| f[0] == "Z")
    })
    .await;

    // Past its timeout: killed, and said so.
    agent
        .runtime
        .run_action(run_request("run-6", "lab/short", 4, "bye"))
        .await;
    let result = action_result(&mut agent, "run-6").await;
    assert_eq!(result.outcome, ActionOutcome::TimedOut, "{result:?}");
    assert!(result.detail.contains("timeout of 300 ms"), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_kills_an_action_a_killed_agent_left_running() {
    let killed_data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (killed, mut killed_observed) = start(config(killed_data.path(), root.path())).await;
    let mut set = desired(2, Vec::new());
    set.actions = vec![catalogue_action(
        "lab/long",
        &["/bin/sh", "-c", "echo long; exec sleep 602", "{{ params.word }}"],
        600_000,
    )];
    killed.apply(set).await.unwrap();
    killed.run_action(run_request("run-7", "lab/long", 2, "hello")).await;
    let pid = {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = std::fs::read_dir("/proc").unwrap().find_map(|e| {
                let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                (String::from_utf8_lossy(&cmdline).replace('\0', " ") == "sleep 602 ").then_some(pid)
            });
            if let Some(pid) = found {
                break pid;
            }
            assert!(Instant::now() < deadline, "the action never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let groups_file = killed_data.path().join("runtime/groups.json");
    eventually("the action's group is recorded", async || recorded(&groups_file, pid)).await;
    // "kill -9": nothing of the runtime runs its shutdown.
    std::mem::forget(killed);
    killed_observed.drain();

    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("runtime")).unwrap();
    std::fs::copy(&groups_file, data.path().join("runtime/groups.json")).unwrap();
    let (next, _observed) = start(config(data.path(), root.path())).await;
    eventually("the action left running is stopped", async || group_is_gone(pid)).await;
    next.shutdown().await;
}

/// `run_as`: the instance runs as that user, in a run directory it owns; a user that does not
/// exist on the host is refused, saying so, and the other instances do not care.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_runs_as_its_user_and_a_missing_user_is_refused_saying_so() {
    let mut agent = Agent::start().await;
    let path = agent.script("service", SLEEPER);
    let mut as_nobody = assignment("shop/web#0", "1.0", &path);
    as_nobody.run_as = Some(endstate_agent_proto::RunAs {
        user: "nobody".into(),
        group: None,
    });
    let mut as_ghost = assignment("shop/api#0", "1.0", &path);
    as_ghost.run_as = Some(endstate_agent_proto::RunAs {
        user: "no-such-user-here".into(),
        group: None,
    });
    agent.apply(desired(1, vec![as_nobody, as_ghost])).await;

    let (_, refused) = agent
        .observed
        .state("shop/api#0", InstanceStateWord::SpawnFailed, Some(1), 0)
        .await;
    assert!(
        refused
            .detail
            .contains("run_as: user `no-such-user-here` does not exist on this host"),
        "{}",
        refused.detail
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("Debian has `nobody`");
    if nix::unistd::geteuid().is_root() {
        let (_, running) = agent
            .observed
            .state("shop/web#0", InstanceStateWord::Running, Some(1), 0)
            .await;
        let pid = running.pid.unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let real: u32 = uids.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(real, nobody.uid.as_raw(), "{uids}");
        let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        assert!(
            !groups.split_whitespace().skip(1).any(|g| g == "0"),
            "root's groups dropped: {groups}"
        );
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(cwd(pid)).unwrap());
        assert_eq!(owner, nobody.uid.as_raw(), "the run directory is the user's");
    } else {
        // An agent that is not root cannot become another user, and says so.
        let (_, refused) = agent
            .observed
            .state("shop/web#0", InstanceStateWord::SpawnFailed, Some(1), 0)
            .await;
        assert!(
            refused.detail.contains("needs the agent to run as root"),
            "{}",
            refused.detail
        );
    }
}
