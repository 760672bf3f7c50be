//! Health probes against real servers on `127.0.0.1` and real `/bin/sh` commands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::get;
use endstate_agent::{Probe, ProbeResult, probe};

use crate::servers;

/// Short, because the timeout cases must hit it; generous enough for a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(2);

#[track_caller]
fn check(result: &ProbeResult, ok: bool, detail_contains: &str) {
    assert_eq!(result.ok, ok, "{result:?}");
    assert!(
        result.detail.contains(detail_contains),
        "{result:?} should mention {detail_contains:?}"
    );
}

fn http(port: u16, path: &str) -> Probe {
    Probe::Http {
        port,
        path: path.to_owned(),
    }
}

fn sh(script: &str) -> Probe {
    Probe::Exec {
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".to_owned(), script.to_owned()],
        env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
        work_dir: None,
        run_as: None,
    }
}

/// Whether process `pid` is gone (or a zombie, which holds nothing but its entry).
fn process_is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// Waits for `file` to hold a pid, then for that process to be dead.
async fn eventually_dead(file: &Path) {
    let mut pid = None;
    crate::eventually("pid file written", async || {
        pid = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        pid.is_some()
    })
    .await;
    let pid = pid.unwrap();
    crate::eventually("probe's leftover process killed", async || process_is_dead(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_wants_2xx() {
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/sick", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "sick") }))
        .route("/moved", get(|| async { Redirect::temporary("/health") }));
    let port = servers::serve(router).await.port();

    check(&probe(&http(port, "/health"), TIMEOUT).await, true, "HTTP 200 OK");
    check(
        &probe(&http(port, "health"), TIMEOUT).await,
        true,
        "/health: HTTP 200 OK",
    );
    check(&probe(&http(port, "/sick"), TIMEOUT).await, false, "HTTP 503");
    check(&probe(&http(port, "/nope"), TIMEOUT).await, false, "HTTP 404");
    // Redirects are not followed: a 3xx is not healthy.
    check(&probe(&http(port, "/moved"), TIMEOUT).await, false, "HTTP 307");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_fails_on_silence_and_on_nothing_listening() {
    let hanging = servers::hanging().await.port();
    let result = probe(&http(hanging, "/health"), Duration::from_millis(200)).await;
    check(&result, false, "timed out after 200ms");

    let closed = servers::closed_port().await;
    let result = probe(&http(closed, "/health"), TIMEOUT).await;
    check(&result, false, &format!("GET http://127.0.0.1:{closed}/health: "));
    assert!(!result.detail.contains("timed out"), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probe_connects() {
    let listening = servers::hanging().await.port();
    check(
        &probe(&Probe::Tcp { port: listening }, TIMEOUT).await,
        true,
        "connected",
    );
    let closed = servers::closed_port().await;
    let result = probe(&Probe::Tcp { port: closed }, TIMEOUT).await;
    check(&result, false, &format!("connect 127.0.0.1:{closed}: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probe_wants_exit_0() {
    check(
        &probe(&sh("echo all good"), TIMEOUT).await,
        true,
        "/bin/sh: exit code 0: all good",
    );
    check(
        &probe(&sh("echo degraded; exit 3"), TIMEOUT).await,
        false,
        "exit code 3: degraded",
    );
    check(&probe(&sh("kill -9 $$"), TIMEOUT).await, false, "killed by signal 9");
    // Exactly the given environment: nothing inherited.
    check(&probe(&sh("echo \"[$HOME]\""), TIMEOUT).await, true, "exit code 0: []");
    // In the given working directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ready"), "").unwrap();
    let Probe::Exec { program, args, env, .. } = sh("test -f ready && pwd") else {
        unreachable!()
    };
    let in_dir = Probe::Exec {
        program,
        args,
        env,
        work_dir: Some(dir.path().to_owned()),
        run_as: None,
    };
    check(&probe(&in_dir, TIMEOUT).await, true, &dir.path().display().to_string());
    check(&probe(&sh("test -f ready"), TIMEOUT).await, false, "exit code 1");
    // A chatty command is read to its end, but only the start is kept.
    let chatty = probe(&sh("yes | head -c 1000000"), TIMEOUT).await;
    assert!(chatty.ok, "{chatty:?}");
    assert!(chatty.detail.len() < 1000, "{} bytes of detail", chatty.detail.len());
    let missing = Probe::Exec {
        program: PathBuf::from("/nonexistent/check"),
        args: Vec::new(),
        env: BTreeMap::new(),
        work_dir: None,
        run_as: None,
    };
    check(
        &probe(&missing, TIMEOUT).await,
        false,
        "/nonexistent/check: could not start: ",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probe_is_killed_with_its_group_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
    let result = probe(&sh(&script), Duration::from_millis(300)).await;
    check(&result, false, "timed out after 300ms; its process group was killed");
    eventually_dead(&pid_file).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probe_leaves_nothing_behind_after_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // The background sleep keeps stdout open; the probe must still end, with the leader's status.
    let script = format!("sleep 30 & echo $! > {}; echo done", pid_file.display());
    check(&probe(&sh(&script), TIMEOUT).await, true, "exit code 0: done");
    eventually_dead(&pid_file).await;
}
