//! Integration tests of the supervisor with real processes (`/bin/sh`), of the artifact cache
//! and health probes against real servers on `127.0.0.1` port 0, of the observation buffer and
//! host facts on temporary directories, and of the runtime (the reconciler) with real processes
//! (modules under `it/`).
//!
//! Tests wait on events with generous timeouts and assert order and content, never durations.
#![allow(clippy::unwrap_used)]

#[path = "it/artifact.rs"]
mod artifact;
#[path = "it/buffer.rs"]
mod buffer;
#[path = "it/facts.rs"]
mod facts;
#[path = "it/health.rs"]
mod health;
#[path = "it/runtime.rs"]
mod runtime;
#[path = "it/servers.rs"]
mod servers;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

use endstate_agent::{
    InstanceEvent, InstanceSpec, InstanceState, RestartPolicy, Supervisor, SupervisorConfig, SupervisorError,
    SupervisorHandle,
};
use nix::sys::signal::{kill, killpg};
use nix::unistd::Pid;
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep, timeout};

/// Generous: only a broken supervisor makes a test wait this long.
const PATIENCE: Duration = Duration::from_secs(10);

fn sh(id: &str, script: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.to_owned(),
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".to_owned(), script.to_owned()],
        env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
        work_dir: std::env::temp_dir(),
        stop_grace: Duration::from_secs(5),
        restart: RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            reset_after: Duration::from_secs(60),
        },
        run_as: None,
    }
}

/// The next state of instance `id`, skipping other instances' events.
async fn next(events: &mut broadcast::Receiver<InstanceEvent>, id: &str) -> InstanceState {
    loop {
        let event = timeout(PATIENCE, events.recv())
            .await
            .expect("no event in time")
            .unwrap();
        if event.id == id {
            return event.state;
        }
    }
}

/// Polls `condition` until it holds, or fails the test after [`PATIENCE`].
async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not reached in time");
        sleep(Duration::from_millis(20)).await;
    }
}

async fn log_contains(supervisor: &SupervisorHandle, id: &str, needle: &str) -> bool {
    supervisor.logs(id).await.unwrap().stdout.text().contains(needle)
}

fn group_is_gone(pgid: u32) -> bool {
    killpg(Pid::from_raw(i32::try_from(pgid).unwrap()), None).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_logs_and_stops() {
    let supervisor = Supervisor::spawn(SupervisorConfig::default());
    let mut events = supervisor.subscribe();
    let id = "web/api#0";
    supervisor.start(sh(id, "echo hello; exec sleep 1000")).await.unwrap();

    assert!(matches!(next(&mut events, id).await, InstanceState::Starting));
    let InstanceState::Running { pid } = next(&mut events, id).await else {
        panic!("not running")
    };
    eventually("hello in the log", async || {
        log_contains(&supervisor, id, "hello").await
    })
    .await;
    assert_eq!(supervisor.instances().await.unwrap(), [id]);

    supervisor.stop(id).await.unwrap();
    assert!(matches!(next(&mut events, id).await, InstanceState::Stopping));
    let exited = next(&mut events, id).await;
    assert!(
        matches!(
            exited,
            InstanceState::Exited {
                code: None,
                signal: Some(15)
            }
        ),
        "{exited:?}"
    );
    let stopped = next(&mut events, id).await;
    assert!(
        matches!(stopped, InstanceState::Stopped { killed: false }),
        "{stopped:?}"
    );
    assert!(
        kill(Pid::from_raw(i32::try_from(pid).unwrap()), None).is_err(),
        "pid {pid} still exists"
    );
    assert!(group_is_gone(pid));

    // Logs outlive the instance; stopping twice is fine; starting again is allowed.
    assert!(log_contains(&supervisor, id, "hello").await);
    supervisor.stop(id).await.unwrap();
    supervisor.start(sh(id, "exec sleep 1000")).await.unwrap();
    assert!(matches!(
        supervisor.start(sh(id, "exec sleep 1000")).await,
        Err(SupervisorError::AlreadySupervised(_))
    ));
    assert!(matches!(
        supervisor.stop("nope").await,
        Err(SupervisorError::UnknownInstance(_))
    ));
    supervisor.shutdown().await.unwrap();
    assert!(matches!(supervisor.logs(id).await, Err(SupervisorError::ShutDown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_doubling_backoff() {
    let supervisor = Supervisor::spawn(SupervisorConfig::default());
    let mut events = supervisor.subscribe();
    let id = "batch/fail#0";
    let spec = sh(id, "exit 3");
    let initial = spec.restart.initial_backoff;
    supervisor.start(spec).await.unwrap();

    for attempt in 1..=3 {
        assert!(matches!(next(&mut events, id).await, InstanceState::Starting));
        assert!(matches!(next(&mut events, id).await, InstanceState::Running { .. }));
        let exited = next(&mut events, id).await;
        assert!(
            matches!(
                exited,
                InstanceState::Exited {
                    code: Some(3),
                    signal: None
                }
            ),
            "{exited:?}"
        );
        let InstanceState::BackingOff {
            attempt: reported,
            delay,
        } = next(&mut events, id).await
        else {
            panic!("no backoff")
        };
        assert_eq!(reported, attempt);
        assert_eq!(delay, initial * 2_u32.pow(attempt - 1));
    }
    supervisor.stop(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_the_whole_group_after_the_grace() {
    let supervisor = Supervisor::spawn(SupervisorConfig::default());
    let mut events = supervisor.subscribe();
    let id = "stubborn/sh#0";
    let mut spec = sh(
        id,
        r#"trap "" TERM; sleep 1000 & echo ready; while :; do sleep 0.1; done"#,
    );
    spec.stop_grace = Duration::from_millis(300);
    supervisor.start(spec).await.unwrap();

    assert!(matches!(next(&mut events, id).await, InstanceState::Starting));
    let InstanceState::Running { pid } = next(&mut events, id).await else {
        panic!("not running")
    };
    // The trap is set before "ready" is written, so SIGTERM is ignored from here on.
    eventually("ready in the log", async || {
        log_contains(&supervisor, id, "ready").await
    })
    .await;

    supervisor.stop(id).await.unwrap();
    assert!(matches!(next(&mut events, id).await, InstanceState::Stopping));
    let exited = next(&mut events, id).await;
    assert!(
        matches!(
            exited,
            InstanceState::Exited {
                code: None,
                signal: Some(9)
            }
        ),
        "{exited:?}"
    );
    let stopped = next(&mut events, id).await;
    assert!(
        matches!(stopped, InstanceState::Stopped { killed: true }),
        "{stopped:?}"
    );
    // `sleep 1000` inherited the ignored SIGTERM and outlives the leader unless the whole group is
    // killed. Once killed, the children are reparented and reaped by init, hence the wait.
    eventually("the group is gone", async || group_is_gone(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleans_up_what_the_leader_left_behind() {
    let supervisor = Supervisor::spawn(SupervisorConfig::default());
    let mut events = supervisor.subscribe();
    let id = "leaky/sh#0";
    // The leader exits at once; its background child stays in the group.
    supervisor.start(sh(id, "sleep 1000 & exit 0")).await.unwrap();

    assert!(matches!(next(&mut events, id).await, InstanceState::Starting));
    let InstanceState::Running { pid } = next(&mut events, id).await else {
        panic!("not running")
    };
    assert!(matches!(
        next(&mut events, id).await,
        InstanceState::Exited { code: Some(0), .. }
    ));
    assert!(matches!(
        next(&mut events, id).await,
        InstanceState::BackingOff { attempt: 1, .. }
    ));
    eventually("the old group is gone", async || group_is_gone(pid)).await;
    supervisor.stop(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_drops_a_stopped_instance_only() {
    let supervisor = Supervisor::spawn(SupervisorConfig::default());
    let id = "web/api#0";
    supervisor.start(sh(id, "echo hello; exec sleep 1000")).await.unwrap();
    assert!(matches!(
        supervisor.forget(id).await,
        Err(SupervisorError::AlreadySupervised(_))
    ));
    supervisor.stop(id).await.unwrap();
    supervisor.forget(id).await.unwrap();
    assert!(supervisor.instances().await.unwrap().is_empty());
    assert!(matches!(
        supervisor.logs(id).await,
        Err(SupervisorError::UnknownInstance(_))
    ));
    assert!(matches!(
        supervisor.forget(id).await,
        Err(SupervisorError::UnknownInstance(_))
    ));
    // Its id can be started again.
    supervisor.start(sh(id, "exec sleep 1000")).await.unwrap();
    supervisor.shutdown().await.unwrap();
}

/// No process ever runs here, so time can be paused: the delays are checked exactly and the test
/// does not wait for them.
#[tokio::test(start_paused = true)]
async fn missing_program_backs_off_without_panicking() {
    let supervisor = Supervisor::spawn(SupervisorConfig::default());
    let mut events = supervisor.subscribe();
    let id = "ghost/missing#0";
    let mut spec = sh(id, "");
    spec.program = PathBuf::from("/nonexistent/endstate-test-program");
    spec.restart = RestartPolicy {
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(4),
        reset_after: Duration::from_secs(60),
    };
    supervisor.start(spec).await.unwrap();

    let mut delays = Vec::new();
    for attempt in 1..=4 {
        assert!(matches!(next(&mut events, id).await, InstanceState::Starting));
        let InstanceState::SpawnFailed { error } = next(&mut events, id).await else {
            panic!("spawned")
        };
        assert_eq!(error.kind(), ErrorKind::NotFound);
        let InstanceState::BackingOff {
            attempt: reported,
            delay,
        } = next(&mut events, id).await
        else {
            panic!("no backoff")
        };
        assert_eq!(reported, attempt);
        delays.push(delay.as_secs());
    }
    assert_eq!(delays, [1, 2, 4, 4]);

    // A stop during the backoff ends it at once.
    supervisor.stop(id).await.unwrap();
    assert!(matches!(next(&mut events, id).await, InstanceState::Stopping));
    assert!(matches!(
        next(&mut events, id).await,
        InstanceState::Stopped { killed: false }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_buffer_keeps_the_tail() {
    let capacity = 4096;
    let supervisor = Supervisor::spawn(SupervisorConfig {
        log_capacity: capacity,
        ..SupervisorConfig::default()
    });
    let mut events = supervisor.subscribe();
    let id = "chatty/sh#0";
    let n_lines = 2000;
    let script = format!("i=0; while [ $i -lt {n_lines} ]; do echo line-$i; i=$((i+1)); done; echo END; echo oops >&2");
    supervisor.start(sh(id, &script)).await.unwrap();

    // `BackingOff` comes after the run's output was read.
    loop {
        if let InstanceState::BackingOff { .. } = next(&mut events, id).await {
            break;
        }
    }
    supervisor.stop(id).await.unwrap();
    let logs = supervisor.logs(id).await.unwrap();
    let n_written: usize = (0..n_lines).map(|i| format!("line-{i}\n").len()).sum::<usize>() + "END\n".len();
    assert_eq!(logs.stdout.tail.len(), capacity);
    assert_eq!(logs.stdout.dropped_bytes, u64::try_from(n_written - capacity).unwrap());
    assert!(logs.stdout.text().ends_with(&format!("line-{}\nEND\n", n_lines - 1)));
    assert_eq!(logs.stderr.text(), "oops\n");
    assert_eq!(logs.stderr.dropped_bytes, 0);
}
