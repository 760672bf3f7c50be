//! `example-service`: the small service endstate's example systems run as real processes, and that
//! tests and demos make go bad on purpose (a chaos target for rollouts).
//!
//! ```text
//! example-service --listen 127.0.0.1:PORT [--name NAME] [--version VERSION]
//!                 [--config FILE] [--data-dir DIR] [--host HOST]
//! ```
//!
//! ```text
//! example-service flush --port PORT [--scope SCOPE]
//! ```
//!
//! is the service's admin client (what the example systems' actions run): it POSTs
//! `/admin/flush?scope=SCOPE` to `127.0.0.1:PORT`, prints the answer, and exits 0 on a 200.
//!
//! On start it prints exactly one line to stdout, after the socket is bound and the signal handlers are
//! installed: `example-service NAME VERSION listening on IP:PORT` (with `--listen 127.0.0.1:0` the line
//! carries the port the kernel chose). The effective faults go to stderr on a second line.
//!
//! # Routes
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `200 ok`, or `503` while `fail_health` is set. Never delayed. |
//! | `GET /`, `GET /work` | the traffic endpoint: after `latency_ms`, `200 {"name","version","host"}`, or `500` with probability `error_rate` |
//! | `GET /metrics` | Prometheus text format (see below) |
//! | `POST /admin/flush` | drops the in-memory cache, answers `{"dropped": N}` |
//!
//! # Faults
//!
//! | knob | config key | environment | version marker |
//! |---|---|---|---|
//! | health fails | `fail_health = true` | `EXAMPLE_FAIL_HEALTH=true` | `-bad-health` |
//! | traffic errors | `error_rate = 0.5` (0..=1) | `EXAMPLE_ERROR_RATE=0.5` | `-errors` (rate 1.0) |
//! | traffic latency | `latency_ms = 300` (0..=60000) | `EXAMPLE_LATENCY_MS=300` | `-slow` (300 ms) |
//!
//! `--version` is only reported (it selects no code) except for the markers: a version containing
//! `-bad-health`, `-errors` or `-slow` (e.g. `1.1.0-errors`, `1.2.0-slow-errors`) turns the matching fault
//! on, so rolling out a "bad version" is a real regression. Sources are layered and later wins per key:
//! defaults (healthy) < version markers < `--config` file < environment. The config file is either JSON
//! (first non-blank character `{`) or `key = value` lines with `#` comments; unknown keys, duplicate keys
//! and out-of-range values are rejected. Empty environment variables count as unset.
//!
//! # Metrics
//!
//! `example_up 1`, `example_info{name,version,host} 1`, `example_requests_total{code="200"|"500"}` and the
//! `example_request_duration_seconds` histogram (traffic requests only, injected latency included),
//! `example_health_checks_total{code}`, `example_cache_entries`, `example_cache_flushes_total`,
//! `example_start_time_seconds`, `example_starts` (with `--data-dir`), and the effective faults as
//! `example_fault_fail_health`, `example_fault_error_rate`, `example_fault_latency_seconds`.
//!
//! # Data directory
//!
//! With `--data-dir DIR` (created if missing) the service keeps `DIR/example-service.json` with its pid,
//! bound address, name, version and a start counter that survives restarts, so a restart shows up as
//! `example_starts` going up while a re-adopted process keeps its count.
//!
//! # Exit codes and signals
//!
//! `0` after SIGTERM or SIGINT: it stops accepting, lets in-flight requests finish for up to 800 ms, then
//! exits (always within 1 s). `2` for a usage or configuration error (the message names the key and
//! `file:line` or the environment variable). `1` for a runtime error (address in use, unwritable data
//! directory).

mod faults;
mod metrics;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde_json::json;

use crate::faults::Faults;
use crate::metrics::{Info, Metrics};

/// How long in-flight requests may finish after SIGTERM before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(800);

/// Name of the state file inside `--data-dir`.
const STATE_FILE: &str = "example-service.json";

const AFTER_HELP: &str = "\
Routes:
  GET  /health        200 \"ok\", or 503 while fail_health is set
  GET  / , GET /work  traffic: after latency_ms, 200 JSON {name,version,host},
                      or 500 with probability error_rate
  GET  /metrics       Prometheus text: example_up, example_info,
                      example_requests_total{code}, example_fault_*,
                      example_request_duration_seconds (histogram), ...
  POST /admin/flush   drop the in-memory cache, answers {\"dropped\": N}

Faults (later wins: version marker < --config file < environment):
  marker       config key          environment
  -bad-health  fail_health = true  EXAMPLE_FAIL_HEALTH=true
  -errors      error_rate = 0.5    EXAMPLE_ERROR_RATE=0.5
  -slow        latency_ms = 300    EXAMPLE_LATENCY_MS=300
  error_rate is 0..=1 (the marker sets 1), latency_ms 0..=60000 (marker: 300).
  The config file is JSON ({\"error_rate\": 0.5}) or `key = value` lines,
  # starts a comment; unknown keys and bad values are errors.

Exit codes: 0 after SIGTERM/SIGINT (graceful, within 1 s),
            2 usage or configuration error, 1 runtime error.";

/// A small HTTP service with health, metrics and a traffic endpoint whose behaviour can be made bad
/// by version, config file or environment (a demo and chaos target for endstate).
#[derive(Debug, Parser)]
#[command(name = "example-service", disable_version_flag = true, after_help = AFTER_HELP)]
struct Args {
    /// Address to listen on, IP:PORT; port 0 picks a free port (printed on stdout).
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// Instance name, reported in answers, metrics and the start line.
    #[arg(long, default_value = "example")]
    name: String,
    /// Version to report. Contains `-bad-health`, `-errors` or `-slow` to turn that fault on.
    #[arg(long, value_name = "VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    version: String,
    /// Fault config file: JSON or `key = value` lines (fail_health, error_rate, latency_ms).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the state file (pid, address, start counter); created if missing.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Host name to report [default: the kernel's host name].
    #[arg(long, env = "EXAMPLE_HOST")]
    host: Option<String>,
}

/// Shared by all handlers.
struct AppState {
    name: String,
    version: String,
    host: String,
    faults: Faults,
    metrics: Metrics,
    rng: AtomicU64,
    start_time_unix: f64,
    starts: Option<u64>,
}

impl AppState {
    /// A uniform number in `[0, 1)`: SplitMix64 over an atomic counter (no dependency, lock-free).
    fn random_unit(&self) -> f64 {
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("flush") {
        return flush_client(&argv[2..]);
    }
    let args = Args::parse();
    let faults = match load_faults(&args) {
        Ok(faults) => faults,
        Err(err) => {
            eprintln!("example-service: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("example-service: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args, faults)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("example-service: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Version markers, then the config file, then the environment.
fn load_faults(args: &Args) -> Result<Faults, faults::ConfigError> {
    let mut faults = Faults::from_version(&args.version);
    if let Some(path) = &args.config {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| faults::ConfigError {
            origin: origin.clone(),
            key: None,
            message: format!("cannot read the config file: {err}"),
        })?;
        faults.apply_file(&origin, &text)?;
    }
    faults.apply_env(|var| std::env::var_os(var))?;
    Ok(faults)
}

async fn run(args: Args, faults: Faults) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before the start line is printed, so a SIGTERM right after it is handled gracefully.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let starts = match &args.data_dir {
        Some(dir) => Some(record_start(dir, &args, addr)?),
        None => None,
    };

    let state = Arc::new(AppState {
        host: args.host.clone().unwrap_or_else(system_host_name),
        name: args.name,
        version: args.version,
        faults,
        metrics: Metrics::default(),
        rng: AtomicU64::new(seed()),
        start_time_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        starts,
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/", get(work))
        .route("/work", get(work))
        .route("/metrics", get(metrics))
        .route("/admin/flush", post(flush))
        .with_state(Arc::clone(&state));

    println!("example-service {} {} listening on {addr}", state.name, state.version);
    eprintln!(
        "example-service: faults fail_health={} error_rate={} latency_ms={}",
        faults.fail_health, faults.error_rate, faults.latency_ms
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let mut server = tokio::spawn(async move { server.await });
    let signal_name = tokio::select! {
        ended = &mut server => {
            ended.context("server task failed")?.context("serving")?;
            anyhow::bail!("the server stopped on its own");
        }
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    eprintln!("example-service: {signal_name} received, shutting down");
    let _ = stop_tx.send(());
    if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
        eprintln!("example-service: in-flight requests did not finish within {SHUTDOWN_GRACE:?}, exiting anyway");
    }
    Ok(())
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let ok = !state.faults.fail_health;
    state.metrics.observe_health(ok);
    if ok {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy: fail_health is set").into_response()
    }
}

async fn work(State(state): State<Arc<AppState>>) -> Response {
    let started = Instant::now();
    if state.faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(state.faults.latency_ms)).await;
    }
    let fail = state.faults.error_rate > 0.0 && state.random_unit() < state.faults.error_rate;
    let response = if fail {
        let body = json!({
            "error": format!("injected fault (error_rate = {})", state.faults.error_rate),
            "name": state.name,
            "version": state.version,
            "host": state.host,
        });
        (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
    } else {
        let body = json!({ "name": state.name, "version": state.version, "host": state.host });
        (StatusCode::OK, axum::Json(body)).into_response()
    };
    state.metrics.observe_request(!fail, started.elapsed());
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&Info {
        name: &state.name,
        version: &state.version,
        host: &state.host,
        faults: &state.faults,
        start_time_unix: state.start_time_unix,
        starts: state.starts,
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn flush(State(state): State<Arc<AppState>>) -> Response {
    let dropped = state.metrics.flush_cache();
    axum::Json(json!({ "dropped": dropped })).into_response()
}

/// `example-service flush --port PORT [--scope SCOPE]`: the admin client, std only.
fn flush_client(args: &[String]) -> ExitCode {
    use std::io::{Read, Write};
    let mut port = None;
    let mut scope = "all".to_owned();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        match (flag.as_str(), rest.next()) {
            ("--port", Some(value)) => port = value.parse::<u16>().ok(),
            ("--scope", Some(value)) => scope.clone_from(value),
            _ => {
                eprintln!("usage: example-service flush --port PORT [--scope SCOPE]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(port) = port else {
        eprintln!("usage: example-service flush --port PORT [--scope SCOPE]");
        return ExitCode::from(2);
    };
    if !scope
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        eprintln!("example-service flush: scope {scope:?} is not a word");
        return ExitCode::from(2);
    }
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "POST /admin/flush?scope={scope} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })();
    match answer {
        Ok(answer) if answer.starts_with("HTTP/1.1 200") => {
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            println!("flushed {scope} on 127.0.0.1:{port}: {body}");
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprintln!(
                "example-service flush: 127.0.0.1:{port} answered {}",
                answer.lines().next().unwrap_or_default()
            );
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("example-service flush: 127.0.0.1:{port}: {error}");
            ExitCode::from(1)
        }
    }
}

/// Bumps the start counter in `DIR/example-service.json` and rewrites the file atomically.
fn record_start(dir: &Path, args: &Args, addr: SocketAddr) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let path = dir.join(STATE_FILE);
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(value) => value.get("starts").and_then(serde_json::Value::as_u64).unwrap_or(0),
            Err(err) => {
                eprintln!("example-service: ignoring unreadable {}: {err}", path.display());
                0
            }
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let starts = previous.saturating_add(1);
    let body = json!({
        "name": args.name,
        "version": args.version,
        "pid": std::process::id(),
        "listen": addr.to_string(),
        "starts": starts,
    });
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(&tmp, format!("{body:#}\n")).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(starts)
}

/// The kernel's host name, without libc.
fn system_host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A per-process seed for the error-rate dice: time and pid, not cryptographic.
fn seed() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}
