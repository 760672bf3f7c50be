//! End-to-end tests of the real `example-service` binary: spawned as a process on a free loopback port,
//! driven over HTTP, stopped with a real SIGTERM.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_example-service");

/// A running service; killed on drop so a failing test leaves no process behind.
struct Service {
    child: Child,
    /// Kept open so the service never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    url: String,
}

impl Service {
    /// Starts the binary with `--listen 127.0.0.1:0` plus `args` and `env`, waits for its start line.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Service {
        let mut cmd = Command::new(BIN);
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in [
            "EXAMPLE_FAIL_HEALTH",
            "EXAMPLE_ERROR_RATE",
            "EXAMPLE_LATENCY_MS",
            "EXAMPLE_HOST",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        if line.is_empty() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!(
                "service exited before its start line: {:?}; stderr: {err}",
                child.wait()
            );
        }
        let addr = line.trim().rsplit_once(" listening on ").map(|(_, a)| a.to_owned());
        let addr = addr.unwrap_or_else(|| panic!("unexpected start line {line:?}"));
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        Service {
            child,
            _stdout: stdout,
            url: format!("http://{addr}"),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')));
        value
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// Sends SIGTERM with the `kill` command and waits (bounded) for the exit.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let pid = self.child.id().to_string();
        let sent = Instant::now();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, sent.elapsed());
            }
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "still running 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (it is expected to exit on its own), returning code and stderr.
fn run_to_exit(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .env_remove("EXAMPLE_ERROR_RATE")
        .env_remove("EXAMPLE_LATENCY_MS")
        .env_remove("EXAMPLE_FAIL_HEALTH")
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "printed a start line: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test]
async fn starts_healthy_and_serves_traffic_and_metrics() {
    let svc = Service::start(&["--name", "web", "--version", "1.2.3", "--host", "host-a"], &[]);
    assert_eq!(svc.get("/health").await, (200, "ok".to_owned()));
    for path in ["/work", "/"] {
        let (status, body) = svc.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"name": "web", "version": "1.2.3", "host": "host-a"})
        );
    }
    assert_eq!(svc.metric("example_up").await, 1.0);
    assert_eq!(
        svc.metric("example_info{name=\"web\",version=\"1.2.3\",host=\"host-a\"}")
            .await,
        1.0
    );
    assert_eq!(svc.metric("example_requests_total{code=\"200\"}").await, 2.0);
    assert_eq!(svc.metric("example_requests_total{code=\"500\"}").await, 0.0);
    assert_eq!(svc.metric("example_request_duration_seconds_count").await, 2.0);
    assert_eq!(
        svc.metric("example_request_duration_seconds_bucket{le=\"+Inf\"}").await,
        2.0
    );
    assert_eq!(svc.metric("example_health_checks_total{code=\"200\"}").await, 1.0);

    // Each successful traffic request is one cache entry; a flush drops them and reports how many.
    let flush = reqwest::Client::new()
        .post(format!("{}/admin/flush", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(flush.status().as_u16(), 200);
    let body: serde_json::Value = flush.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"dropped": 2}));
    assert_eq!(svc.metric("example_cache_entries").await, 0.0);
    assert_eq!(svc.get("/nope").await.0, 404);
}

#[tokio::test]
async fn bad_health_version_fails_health_only() {
    let svc = Service::start(&["--version", "1.1.0-bad-health"], &[]);
    let (status, _) = svc.get("/health").await;
    assert_eq!(status, 503);
    assert_eq!(svc.get("/work").await.0, 200);
    assert_eq!(svc.metric("example_health_checks_total{code=\"503\"}").await, 1.0);
    assert_eq!(svc.metric("example_fault_fail_health").await, 1.0);
}

#[tokio::test]
async fn errors_version_marker_fails_traffic() {
    let svc = Service::start(&["--version", "2.0.0-errors"], &[]);
    assert_eq!(svc.get("/work").await.0, 500);
    assert_eq!(svc.get("/health").await.0, 200);
}

#[tokio::test]
async fn error_rate_one_from_config_file_gives_500s_counted_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("faults.conf");
    std::fs::write(&config, "# make it bad\nerror_rate = 1.0\n").unwrap();
    let svc = Service::start(&["--config", config.to_str().unwrap()], &[]);
    for _ in 0..3 {
        let (status, body) = svc.get("/work").await;
        assert_eq!(status, 500, "{body}");
    }
    assert_eq!(svc.metric("example_requests_total{code=\"500\"}").await, 3.0);
    assert_eq!(svc.metric("example_requests_total{code=\"200\"}").await, 0.0);
    assert_eq!(svc.metric("example_fault_error_rate").await, 1.0);
    // Health is not affected by the error rate.
    assert_eq!(svc.get("/health").await.0, 200);
}

#[tokio::test]
async fn environment_overrides_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("faults.json");
    std::fs::write(&config, "{\"error_rate\": 1, \"fail_health\": true}\n").unwrap();
    let svc = Service::start(
        &["--config", config.to_str().unwrap()],
        &[("EXAMPLE_ERROR_RATE", "0"), ("EXAMPLE_FAIL_HEALTH", "false")],
    );
    assert_eq!(svc.get("/work").await.0, 200);
    assert_eq!(svc.get("/health").await.0, 200);
}

#[tokio::test]
async fn latency_delays_traffic_but_not_health() {
    let svc = Service::start(&[], &[("EXAMPLE_LATENCY_MS", "250")]);
    let started = Instant::now();
    let (status, _) = svc.get("/work").await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert!(elapsed >= Duration::from_millis(250), "answered after {elapsed:?}");
    // The histogram saw the delay: nothing in the buckets below 250 ms.
    assert_eq!(
        svc.metric("example_request_duration_seconds_bucket{le=\"0.1\"}").await,
        0.0
    );
    assert!(svc.metric("example_request_duration_seconds_sum").await >= 0.25);
    assert_eq!(svc.metric("example_fault_latency_seconds").await, 0.25);
}

#[tokio::test]
async fn bad_config_exits_2_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.conf"), "fail_health = true\n\nerror_rate = lots\n").unwrap();
    let (code, stderr) = run_to_exit(&["--config", "bad.conf"], dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("bad.conf:3"), "{stderr}");
    assert!(stderr.contains("error_rate"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (code, stderr) = run_to_exit(&["--config", "missing.conf"], dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing.conf"), "{stderr}");
}

#[test]
fn bad_environment_value_exits_2() {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env("EXAMPLE_LATENCY_MS", "slow")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("EXAMPLE_LATENCY_MS") && stderr.contains("latency_ms"),
        "{stderr}"
    );
}

#[test]
fn address_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN).args(["--listen", &addr]).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

#[tokio::test]
async fn sigterm_exits_0_within_a_second() {
    let mut svc = Service::start(&[], &[]);
    assert_eq!(svc.get("/health").await.0, 200);
    let (status, elapsed) = svc.terminate();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_request_still_exits_0_promptly() {
    let mut svc = Service::start(&["--version", "1.0.0-slow"], &[("EXAMPLE_LATENCY_MS", "5000")]);
    let url = format!("{}/work", svc.url);
    let in_flight = tokio::spawn(async move { reqwest::get(url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, elapsed) = tokio::task::block_in_place(|| svc.terminate());
    assert_eq!(status.code(), Some(0), "{status}");
    // Grace is 800 ms; allow slack for a loaded machine, far below the 5 s request.
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
    in_flight.abort();
}

#[tokio::test]
async fn data_dir_counts_starts_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    for expected in 1..=2 {
        let mut svc = Service::start(&["--data-dir", data_arg], &[]);
        assert_eq!(svc.metric("example_starts").await, f64::from(expected));
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(data.join("example-service.json")).unwrap()).unwrap();
        assert_eq!(state["pid"], svc.child.id());
        assert_eq!(state["listen"].as_str().unwrap(), svc.url.trim_start_matches("http://"));
        assert_eq!(svc.terminate().0.code(), Some(0));
    }
}
